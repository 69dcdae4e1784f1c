// Register layouts of the tensor-core flash2 kernel (cuda/attention_flash2_mma.cuh), host/device:
// which matrix element each lane's registers hold for mma.sync.m16n8k16 (float16/bfloat16 inputs,
// float32 accumulators) and ldmatrix.x4, and the row addresses the kernel hands ldmatrix. The CPU
// test (`_core._mma_layout_selftest`) emulates a warp with exactly these functions and checks that
// the kernel's choices give S = Q K^T and O = P V.
#pragma once

#include "flashparity/common.h"

namespace flashparity {
namespace mma {

struct RowCol {
  int row, col;
};

// PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"; g = lane / 4, t = lane % 4.
// A (16 x 16), elements a0..a7 (two per 32-bit register, the lower element in the low half).
FP_HOST_DEVICE FP_INLINE RowCol a_elem(int lane, int i) {
  const int g = lane >> 2, t = lane & 3;
  return {g + ((i >> 1) & 1) * 8, 2 * t + (i & 1) + (i >> 2) * 8};
}
// B (16 x 8, row = k, col = n), elements b0..b3.
FP_HOST_DEVICE FP_INLINE RowCol b_elem(int lane, int i) {
  const int g = lane >> 2, t = lane & 3;
  return {2 * t + (i & 1) + (i >> 1) * 8, g};
}
// C/D (16 x 8), elements c0..c3.
FP_HOST_DEVICE FP_INLINE RowCol c_elem(int lane, int i) {
  const int g = lane >> 2, t = lane & 3;
  return {g + (i >> 1) * 8, 2 * t + (i & 1)};
}

// ldmatrix.m8n8.x4 (b16): lanes 8m..8m+7 give the addresses of rows 0..7 of matrix m; register m of
// lane l receives two elements of matrix m: (l/4, 2(l%4)) and the next column, or with .trans
// (2(l%4), l/4) and the next row.
FP_HOST_DEVICE FP_INLINE RowCol ldsm_elem(int lane, int half, bool trans) {
  const int g = lane >> 2, t = lane & 3;
  return trans ? RowCol{2 * t + half, g} : RowCol{g, 2 * t + half};
}

// The (row, col) offsets, inside a 16 x 16 tile, of the shared-memory row each lane addresses.
// Q (the A operand of S = Q K^T; tile = 16 query rows x 16 head dims): matrices ordered
// (rows +0, cols +0), (+8, +0), (+0, +8), (+8, +8) = registers a0a1, a2a3, a4a5, a6a7.
FP_HOST_DEVICE FP_INLINE RowCol ldsm_q_row(int lane) { return {((lane >> 3) & 1) * 8 + (lane & 7), (lane >> 4) * 8}; }
// K (the B operands of two n-tiles; tile = 16 keys x 16 head dims): matrices (keys +0, dims +0),
// (+0, +8), (+8, +0), (+8, +8) = b0b1, b2b3 of keys +0..7, then b0b1, b2b3 of keys +8..15.
FP_HOST_DEVICE FP_INLINE RowCol ldsm_k_row(int lane) { return {(lane >> 4) * 8 + (lane & 7), ((lane >> 3) & 1) * 8}; }
// V, transposed (the B operands of two n-tiles of O += P V; tile = 16 keys x 16 head dims):
// matrices (keys +0, dims +0), (+8, +0), (+0, +8), (+8, +8) = b0b1, b2b3 of dims +0..7, then of +8..15.
FP_HOST_DEVICE FP_INLINE RowCol ldsm_v_row(int lane) { return {((lane >> 3) & 1) * 8 + (lane & 7), (lane >> 4) * 8}; }

// P from the S accumulators: A register r (elements 2r, 2r+1) of key step kk holds the C elements
// 2(r & 1), 2(r & 1) + 1 of n-tile 2kk + (r >> 1).
FP_HOST_DEVICE FP_INLINE int p_ntile(int kk, int r) { return 2 * kk + (r >> 1); }
FP_HOST_DEVICE FP_INLINE int p_celem(int r) { return 2 * (r & 1); }

}  // namespace mma
}  // namespace flashparity
