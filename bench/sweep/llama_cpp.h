// llama.cpp's CPU attention as the bench's peer: its ggml library (built from the vendored
// tree of the pinned llama-cpp-python source distribution) computing one decode step on
// the bench's data, both ways llama.cpp does: flash attention (ggml_flash_attn_ext, f32
// accumulation, as llama.cpp's graph requests) and the mul_mat + soft_max + mul_mat path it takes
// without flash attention. The cache is laid out as llama.cpp keeps it: f16, token-major
// with the KV heads of a token side by side (the mul_mat path's V transposed,
// [channel][token]). No mask: every token is visible to a decode query. A third path runs
// the same flash attention over a copy laid out head-major ([kv_head][token][channel]), which
// llama.cpp's cache is not: on the CPU its flash attention is much faster that way, so the
// bench shows both rather than pick the peer's slower layout.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace vashista::bench {

class LlamaCppAttention {
public:
    // batch sequences of `tokens` tokens each; kv_heads KV heads of `group` query heads.
    LlamaCppAttention(int batch, int tokens, int kv_heads, int group, int head_dim, int threads);
    ~LlamaCppAttention();
    LlamaCppAttention(const LlamaCppAttention &) = delete;
    LlamaCppAttention &operator=(const LlamaCppAttention &) = delete;

    // Token t of sequence b, KV head h: k and v are [head_dim] f16 bit patterns.
    void set_token(int b, int t, int h, const uint16_t *k, const uint16_t *v);
    // q: [batch][kv_heads * group][head_dim] f32.
    void set_q(const float *q);
    // One step; out: [batch][kv_heads * group][head_dim] f32.
    void flash_attention(float *out);
    void flash_attention_head_major(float *out);
    void mul_mat(float *out);
    // Bytes each path must read: K and V in f16.
    double kv_bytes() const;
    // What the peer is: ggml's version and build (CPU features it was compiled for).
    static std::string description();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace vashista::bench
