// A CPU emulation of one warp of the tensor-core flash2 kernel's tile math, built from the layout
// functions the kernel itself uses (flashparity/mma_layout.h): ldmatrix row addresses, fragment
// layouts, and P taken from the S accumulators. It checks S = Q K^T and O = P V on exact integer
// data, so a wrong lane/register/address choice in the kernel fails a CPU test.
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/mma_layout_check.h"
#include "flashparity/mma_layout.h"

namespace flashparity {

namespace {

using mma::RowCol;

struct Smem {  // a row-major tile with a padded pitch, as in shared memory
  int rows, cols, pitch;
  std::vector<double> v;
  Smem(int r, int c) : rows(r), cols(c), pitch(c + 8), v(static_cast<std::size_t>(r) * (c + 8), -1e300) {}
  double at(int r, int c) const { return v[static_cast<std::size_t>(r) * pitch + c]; }
  double& at(int r, int c) { return v[static_cast<std::size_t>(r) * pitch + c]; }
};

// ldmatrix.x4 at tile offset (r0, c0) with the kernel's per-lane row choice `row_of`:
// regs[lane][m][half].
template <typename RowOf>
std::vector<std::vector<std::vector<double>>> ldmatrix_x4(const Smem& s, int r0, int c0, RowOf row_of, bool trans) {
  std::vector<std::vector<std::vector<double>>> regs(32, std::vector<std::vector<double>>(4, std::vector<double>(2)));
  for (int lane = 0; lane < 32; ++lane)
    for (int m = 0; m < 4; ++m)
      for (int h = 0; h < 2; ++h) {
        const RowCol e = mma::ldsm_elem(lane, h, trans);  // (row, col) inside matrix m
        const RowCol start = row_of(8 * m + e.row);       // the address lane 8m + row supplied
        regs[lane][m][h] = s.at(r0 + start.row, c0 + start.col + e.col);
      }
  return regs;
}

// c[lane][0..3] += A B with A from a[lane][0..7] and B from b[lane][0..3] (the PTX layouts).
void mma16816(std::vector<std::vector<double>>& c, const std::vector<std::vector<double>>& a,
              const std::vector<std::vector<double>>& b) {
  double A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) {
      const RowCol e = mma::a_elem(lane, i);
      A[e.row][e.col] = a[lane][i];
    }
    for (int i = 0; i < 4; ++i) {
      const RowCol e = mma::b_elem(lane, i);
      B[e.row][e.col] = b[lane][i];
    }
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      const RowCol e = mma::c_elem(lane, i);
      for (int k = 0; k < 16; ++k) c[lane][i] += A[e.row][k] * B[k][e.col];
    }
}

// The B operand (b0..b3) of n-tile `which` (0, 1) from an ldmatrix.x4 result: registers 2w, 2w + 1,
// as the kernel passes them to mma.
std::vector<std::vector<double>> b_operand(const std::vector<std::vector<std::vector<double>>>& regs, int which) {
  std::vector<std::vector<double>> b(32);
  for (int lane = 0; lane < 32; ++lane) {
    const auto& lo = regs[lane][2 * which];
    const auto& hi = regs[lane][2 * which + 1];
    b[lane] = {lo[0], lo[1], hi[0], hi[1]};
  }
  return b;
}

std::vector<double> flat(const std::vector<std::vector<double>>& r2) {  // registers -> elements
  std::vector<double> out;
  for (const auto& r : r2) out.insert(out.end(), r.begin(), r.end());
  return out;
}

}  // namespace

// Emulates warp `warp` of a block (64 query rows) over one key tile of bc keys, head dim d, as the
// kernel does it. Returns "" on success, else what differed.
std::string mma_layout_check(int d, int bc, int warp) {
  const int br = 64;
  Smem q(br, d), k(bc, d), v(bc, d);
  std::uint32_t state = 12345u;
  auto next = [&] {  // small integers: every product and sum is exact
    state = state * 1664525u + 1013904223u;
    return static_cast<double>(static_cast<int>((state >> 24) % 7) - 3);
  };
  for (int r = 0; r < br; ++r)
    for (int c = 0; c < d; ++c) q.at(r, c) = next();
  for (int r = 0; r < bc; ++r)
    for (int c = 0; c < d; ++c) k.at(r, c) = next(), v.at(r, c) = next();

  // S = Q K^T: acc_s[n-tile][lane][4]
  std::vector<std::vector<std::vector<double>>> acc_s(bc / 8, std::vector<std::vector<double>>(32, std::vector<double>(4, 0.0)));
  for (int kk = 0; kk < d / 16; ++kk) {
    const auto qa = ldmatrix_x4(q, warp * 16, kk * 16, mma::ldsm_q_row, false);
    std::vector<std::vector<double>> a(32);
    for (int lane = 0; lane < 32; ++lane) a[lane] = flat(qa[lane]);
    for (int np = 0; np < bc / 16; ++np) {
      const auto kb = ldmatrix_x4(k, np * 16, kk * 16, mma::ldsm_k_row, false);
      mma16816(acc_s[2 * np], a, b_operand(kb, 0));
      mma16816(acc_s[2 * np + 1], a, b_operand(kb, 1));
    }
  }
  std::vector<std::vector<double>> s(16, std::vector<double>(bc, 0.0));
  for (int n = 0; n < bc / 8; ++n)
    for (int lane = 0; lane < 32; ++lane)
      for (int e = 0; e < 4; ++e) {
        const RowCol rc = mma::c_elem(lane, e);
        const int row = warp * 16 + rc.row, key = n * 8 + rc.col;
        double want = 0;
        for (int c = 0; c < d; ++c) want += q.at(row, c) * k.at(key, c);
        if (acc_s[n][lane][e] != want)
          return "S mismatch at row " + std::to_string(row) + " key " + std::to_string(key);
        s[rc.row][key] = acc_s[n][lane][e];
      }

  // O = P V with P = the S accumulators in place
  std::vector<std::vector<std::vector<double>>> acc_o(d / 8, std::vector<std::vector<double>>(32, std::vector<double>(4, 0.0)));
  for (int kk = 0; kk < bc / 16; ++kk) {
    std::vector<std::vector<double>> pa(32, std::vector<double>(8));
    for (int lane = 0; lane < 32; ++lane)
      for (int r = 0; r < 4; ++r)
        for (int h = 0; h < 2; ++h) pa[lane][2 * r + h] = acc_s[mma::p_ntile(kk, r)][lane][mma::p_celem(r) + h];
    for (int np = 0; np < d / 16; ++np) {
      const auto vb = ldmatrix_x4(v, kk * 16, np * 16, mma::ldsm_v_row, true);
      mma16816(acc_o[2 * np], pa, b_operand(vb, 0));
      mma16816(acc_o[2 * np + 1], pa, b_operand(vb, 1));
    }
  }
  for (int n = 0; n < d / 8; ++n)
    for (int lane = 0; lane < 32; ++lane)
      for (int e = 0; e < 4; ++e) {
        const RowCol rc = mma::c_elem(lane, e);
        const int dim = n * 8 + rc.col;
        double want = 0;
        for (int key = 0; key < bc; ++key) want += s[rc.row][key] * v.at(key, dim);
        if (acc_o[n][lane][e] != want)
          return "O mismatch at row " + std::to_string(warp * 16 + rc.row) + " dim " + std::to_string(dim);
      }
  return "";
}

}  // namespace flashparity
