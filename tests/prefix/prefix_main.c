/* Two prefixed kernel libraries in one program (tests/prefix/CMakeLists.txt): each check runs
 * in its own translation unit against its own library. */
#include <stdio.h>

int check_a(void);
int check_b(void);

int main(void) {
    const int failures = check_a() + check_b();
    printf("%s\n", failures ? "FAILED" : "both libraries passed");
    return failures ? 1 : 0;
}
