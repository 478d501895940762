#include "llama_cpp.h"

#include <ggml-alloc.h>
#include <ggml-backend.h>
#include <ggml-cpu.h>
#include <ggml.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace vashista::bench {

struct LlamaCppAttention::Impl {
    int batch, tokens, kv_heads, group, head_dim;
    ggml_backend_t backend = nullptr;
    ggml_context *ctx = nullptr;
    ggml_backend_buffer_t buffer = nullptr;
    // The cache as llama.cpp keeps it, per sequence: k and v [token][kv_head][channel],
    // vt [kv_head][channel][token] (the mul_mat path's V); kh and vh [kv_head][token][channel].
    ggml_tensor *k = nullptr, *v = nullptr, *vt = nullptr, *kh = nullptr, *vh = nullptr, *q = nullptr;
    ggml_tensor *flash_out = nullptr, *head_major_out = nullptr, *mul_mat_out = nullptr;
    ggml_cgraph *flash_graph = nullptr, *head_major_graph = nullptr, *mul_mat_graph = nullptr;

    ~Impl() {
        if (buffer) ggml_backend_buffer_free(buffer);
        if (ctx) ggml_free(ctx);
        if (backend) ggml_backend_free(backend);
    }

    void compute(ggml_cgraph *graph) {
        if (ggml_backend_graph_compute(backend, graph) != GGML_STATUS_SUCCESS)
            throw std::runtime_error("llama.cpp: ggml_backend_graph_compute failed");
    }
};

LlamaCppAttention::LlamaCppAttention(int batch, int tokens, int kv_heads, int group, int head_dim, int threads)
    : impl_(std::make_unique<Impl>()) {
    Impl &m = *impl_;
    m.batch = batch, m.tokens = tokens, m.kv_heads = kv_heads, m.group = group, m.head_dim = head_dim;
    m.backend = ggml_backend_cpu_init();
    if (!m.backend) throw std::runtime_error("llama.cpp: ggml_backend_cpu_init failed");
    ggml_backend_cpu_set_n_threads(m.backend, threads);

    // Tensor metadata and two small graphs; the data lives in one backend buffer.
    ggml_init_params params{ggml_tensor_overhead() * 32 + 3 * ggml_graph_overhead(), nullptr, true};
    m.ctx = ggml_init(params);
    if (!m.ctx) throw std::runtime_error("llama.cpp: ggml_init failed");
    const int64_t D = head_dim, T = tokens, H = kv_heads, B = batch, HQ = int64_t(kv_heads) * group;
    m.k = ggml_new_tensor_4d(m.ctx, GGML_TYPE_F16, D, H, T, B);
    m.v = ggml_new_tensor_4d(m.ctx, GGML_TYPE_F16, D, H, T, B);
    m.vt = ggml_new_tensor_4d(m.ctx, GGML_TYPE_F16, T, D, H, B);
    m.kh = ggml_new_tensor_4d(m.ctx, GGML_TYPE_F16, D, T, H, B);
    m.vh = ggml_new_tensor_4d(m.ctx, GGML_TYPE_F16, D, T, H, B);
    m.q = ggml_new_tensor_4d(m.ctx, GGML_TYPE_F32, D, 1, HQ, B);
    // The views llama.cpp's graph takes of its cache: [channel][token][kv_head] per sequence.
    ggml_tensor *k_view = ggml_view_4d(m.ctx, m.k, D, T, H, B, m.k->nb[2], m.k->nb[1], m.k->nb[3], 0);
    ggml_tensor *v_view = ggml_view_4d(m.ctx, m.v, D, T, H, B, m.v->nb[2], m.v->nb[1], m.v->nb[3], 0);
    const float scale = 1.0f / std::sqrt(float(head_dim));

    m.flash_out = ggml_flash_attn_ext(m.ctx, m.q, k_view, v_view, nullptr, scale, 0.0f, 0.0f);
    ggml_prec_set_acc(m.flash_out, GGML_PREC_F32);  // as llama.cpp's graph asks
    m.flash_graph = ggml_new_graph(m.ctx);
    ggml_build_forward_expand(m.flash_graph, m.flash_out);

    m.head_major_out = ggml_flash_attn_ext(m.ctx, m.q, m.kh, m.vh, nullptr, scale, 0.0f, 0.0f);
    ggml_prec_set_acc(m.head_major_out, GGML_PREC_F32);
    m.head_major_graph = ggml_new_graph(m.ctx);
    ggml_build_forward_expand(m.head_major_graph, m.head_major_out);

    ggml_tensor *kq = ggml_mul_mat(m.ctx, k_view, m.q);  // [token][1][q_head][seq]
    ggml_prec_set_acc(kq, GGML_PREC_F32);
    kq = ggml_soft_max_ext(m.ctx, kq, nullptr, scale, 0.0f);
    m.mul_mat_out = ggml_mul_mat(m.ctx, m.vt, kq);  // [channel][1][q_head][seq]
    m.mul_mat_graph = ggml_new_graph(m.ctx);
    ggml_build_forward_expand(m.mul_mat_graph, m.mul_mat_out);

    m.buffer = ggml_backend_alloc_ctx_tensors(m.ctx, m.backend);
    if (!m.buffer) throw std::runtime_error("llama.cpp: could not allocate the cache's tensors");
    ggml_backend_buffer_clear(m.buffer, 0);
}

LlamaCppAttention::~LlamaCppAttention() = default;

void LlamaCppAttention::set_token(int b, int t, int h, const uint16_t *k, const uint16_t *v) {
    Impl &m = *impl_;
    const size_t D = size_t(m.head_dim);
    const size_t at = ((size_t(b) * m.tokens + t) * m.kv_heads + h) * D;
    std::memcpy(static_cast<uint16_t *>(m.k->data) + at, k, D * 2);
    std::memcpy(static_cast<uint16_t *>(m.v->data) + at, v, D * 2);
    uint16_t *vt = static_cast<uint16_t *>(m.vt->data);
    for (size_t d = 0; d < D; ++d) vt[((size_t(b) * m.kv_heads + h) * D + d) * m.tokens + t] = v[d];
    const size_t head_major = ((size_t(b) * m.kv_heads + h) * m.tokens + t) * D;
    std::memcpy(static_cast<uint16_t *>(m.kh->data) + head_major, k, D * 2);
    std::memcpy(static_cast<uint16_t *>(m.vh->data) + head_major, v, D * 2);
}

void LlamaCppAttention::set_q(const float *q) { std::memcpy(impl_->q->data, q, ggml_nbytes(impl_->q)); }

void LlamaCppAttention::flash_attention(float *out) {
    impl_->compute(impl_->flash_graph);
    std::memcpy(out, impl_->flash_out->data, ggml_nbytes(impl_->flash_out));
}

void LlamaCppAttention::flash_attention_head_major(float *out) {
    impl_->compute(impl_->head_major_graph);
    std::memcpy(out, impl_->head_major_out->data, ggml_nbytes(impl_->head_major_out));
}

void LlamaCppAttention::mul_mat(float *out) {
    impl_->compute(impl_->mul_mat_graph);
    std::memcpy(out, impl_->mul_mat_out->data, ggml_nbytes(impl_->mul_mat_out));
}

double LlamaCppAttention::kv_bytes() const {
    return 2.0 * double(impl_->batch) * impl_->tokens * impl_->kv_heads * impl_->head_dim * 2;
}

std::string LlamaCppAttention::description() {
    std::string features;
    ggml_backend_reg_t cpu = ggml_backend_reg_by_name("CPU");
    auto get_features = cpu ? reinterpret_cast<ggml_backend_get_features_t>(
                                  ggml_backend_reg_get_proc_address(cpu, "ggml_backend_get_features"))
                            : nullptr;
    if (get_features)
        for (ggml_backend_feature *f = get_features(cpu); f && f->name; ++f)
            if (std::strcmp(f->value, "1") == 0) features += std::string(features.empty() ? "" : " ") + f->name;
    return std::string("ggml ") + ggml_version() + " (llama-cpp-python 0.3.36's llama.cpp), CPU: " + features;
}

}  // namespace vashista::bench
