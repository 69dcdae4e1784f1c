// Device memory owned by flashparity (CUDA builds): allocation, copies and release, without pybind11
// (implemented in cuda/device_array.cu). Every call checks its CUDA status and throws
// std::runtime_error with the CUDA message.
#pragma once

#include <cstddef>
#include <cstdint>

namespace flashparity {

void* device_alloc(std::size_t bytes, int device);
void device_free(void* ptr, int device) noexcept;
void copy_to_device(void* dst, const void* src, std::size_t bytes, int device);
// `after`: a stream (as the array protocols name streams; 0 = none) whose queued work is waited for first.
void copy_to_host(void* dst, const void* src, std::size_t bytes, int device, std::uintptr_t after = 0);
// A copy queued on `stream` (as the protocols name streams), ordered before the work queued there later.
void copy_to_device_on(void* dst, const void* src, std::size_t bytes, int device, std::uintptr_t stream);
int current_device();  // the calling thread's current CUDA device

}  // namespace flashparity
