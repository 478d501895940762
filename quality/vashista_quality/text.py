"""Long real English text that ships with the OS: Debian's license texts."""
from pathlib import Path

LICENSES = Path("/usr/share/common-licenses")


def real_text(min_chars=None):
    """GPL-3, then the other license files in name order (all of them, or until
    `min_chars` characters)."""
    if not (LICENSES / "GPL-3").is_file():
        raise SystemExit(f"no license texts under {LICENSES} to read (Debian's base-files provides them)")
    files = [LICENSES / "GPL-3"] + sorted(p for p in LICENSES.iterdir() if p.is_file() and p.name != "GPL-3")
    parts, total = [], 0
    for p in files:
        parts.append(p.read_text(errors="replace"))
        total += len(parts[-1])
        if min_chars is not None and total >= min_chars:
            break
    return "\n\n".join(parts)
