// fp.merge_attention_states on the CPU: the float64 math of merge_states.h (shared with the CUDA
// kernel), one output row per task on the thread pool. Its glue is bindings/merge_states_glue.cpp.
#include <cstring>

#include "cpu/threading.h"
#include "flashparity/merge_states.h"

namespace flashparity {

namespace {

template <typename T>
FP_INLINE double load_at(const void* base, std::int64_t offset) {
  T x;
  std::memcpy(&x, static_cast<const char*>(base) + offset, sizeof(T));
  return to_f64(x);
}

template <typename T, typename L>
void merge_rows(const MergeParams& p) {
  const std::int64_t B = p.oa.shape[0], S = p.oa.shape[1], H = p.oa.shape[2], D = p.oa.shape[3];
  parallel_for(B * S, parallel_workers(B * S), [&](std::int64_t row, int) {
    const std::int64_t b = row / S, s = row % S;
    for (std::int64_t h = 0; h < H; ++h) {
      const auto lse_at = [&](const TensorArg& t) {
        return load_at<L>(t.data, b * t.strides[0] + h * t.strides[1] + s * t.strides[2]);
      };
      const MergedState m = merge_state(lse_at(p.lsea), lse_at(p.lseb));
      static_cast<L*>(p.lse_out)[(b * H + h) * S + s] = from_f64<L>(m.lse);
      T* out = static_cast<T*>(p.out) + ((b * S + s) * H + h) * D;
      const auto at = [&](const TensorArg& t, std::int64_t d) {
        return b * t.strides[0] + s * t.strides[1] + h * t.strides[2] + d * t.strides[3];
      };
      for (std::int64_t d = 0; d < D; ++d) {
        const double oa = m.wa != 0.0 ? load_at<T>(p.oa.data, at(p.oa, d)) : 0.0;
        const double ob = m.wb != 0.0 ? load_at<T>(p.ob.data, at(p.ob, d)) : 0.0;
        out[d] = from_f64<T>(merge_value(m, oa, ob));
      }
    }
  });
}

template <typename F>
void with_types(const MergeParams& p, F&& f) {
  FP_DTYPE_SWITCH(p.oa.dtype, T, [&] {
    if (p.lsea.dtype == DType::Float64) f(T{}, double{});
    else f(T{}, float{});
  });
}

}  // namespace

void merge_states_cpu(const MergeParams& p) {
  with_types(p, [&](auto t, auto l) { merge_rows<decltype(t), decltype(l)>(p); });
}

}  // namespace flashparity
