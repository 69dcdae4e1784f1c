// CRC-32 (the zip/gzip/zlib polynomial, bit-reflected 0xEDB88320), for the zip members that
// `flashparity compare` reads byte range by byte range: a stored .npz member's checksum is
// verified on the bytes the comparison reads anyway, at the speed of the read. Included by the
// per-ISA parity units inside their target region (isa_target.h): the AVX2 levels fold 64 bytes a
// step with carry-less multiplies (PCLMULQDQ, as in Intel's "Fast CRC Computation for Generic
// Polynomials Using PCLMULQDQ"), every level handles heads and tails (and whole buffers on the
// scalar level) with slicing-by-8 tables. Same value as zlib.crc32 on every level.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>

namespace flashparity {
namespace crc32_detail {
namespace {  // internal to each per-ISA unit: a unit exports its dispatch tables only (check_isa.py)

constexpr std::uint32_t kPoly = 0xEDB88320u;

// kTables[k][b]: the CRC of byte b followed by k zero bytes (slicing-by-8).
constexpr std::array<std::array<std::uint32_t, 256>, 8> make_tables() {
  std::array<std::array<std::uint32_t, 256>, 8> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ kPoly : c >> 1;
    t[0][i] = c;
  }
  for (int k = 1; k < 8; ++k)
    for (std::uint32_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xffu];
  return t;
}
constexpr auto kTables = make_tables();

// The register form (no pre/post inversion) over n bytes, eight at a time.
std::uint32_t crc32_tables(std::uint32_t crc, const unsigned char* p, std::int64_t n) {
  const auto& t = kTables;
  for (; n >= 8; p += 8, n -= 8) {
    std::uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    lo = __builtin_bswap32(lo);
    hi = __builtin_bswap32(hi);
#endif
    lo ^= crc;
    crc = t[7][lo & 0xffu] ^ t[6][(lo >> 8) & 0xffu] ^ t[5][(lo >> 16) & 0xffu] ^ t[4][lo >> 24] ^
          t[3][hi & 0xffu] ^ t[2][(hi >> 8) & 0xffu] ^ t[1][(hi >> 16) & 0xffu] ^ t[0][hi >> 24];
  }
  for (; n > 0; ++p, --n) crc = t[0][(crc ^ *p) & 0xffu] ^ (crc >> 8);
  return crc;
}

}  // namespace
}  // namespace crc32_detail
}  // namespace flashparity
