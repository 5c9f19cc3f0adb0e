// LD_PRELOAD library: interposes arrow::default_memory_pool() so that Arrow
// code paths that ignore pyarrow's default (Acero, dataset/Parquet IO, ...)
// allocate from the zerrow pool once zerrow_pool has been imported.
//
// It has no link-time dependency on Arrow: pyarrow loads libarrow with
// RTLD_LOCAL, so the real function is looked up in the already loaded library.
#include <dlfcn.h>

#include <atomic>

namespace arrow {
class MemoryPool;
MemoryPool* default_memory_pool();
}  // namespace arrow

namespace {

std::atomic<arrow::MemoryPool*> g_pool{nullptr};

using DefaultPoolFn = arrow::MemoryPool* (*)();

// The soname of the libarrow this build is tied to (libarrow.so.2600 for pyarrow 26.0), from meson.
#ifndef ZERROW_LIBARROW_SONAME
#error "meson.build defines ZERROW_LIBARROW_SONAME"
#endif

DefaultPoolFn RealDefaultPool() {
  void* lib = dlopen(ZERROW_LIBARROW_SONAME, RTLD_NOW | RTLD_NOLOAD);
  if (lib == nullptr) return nullptr;
  auto fn = reinterpret_cast<DefaultPoolFn>(dlsym(lib, "_ZN5arrow19default_memory_poolEv"));
  dlclose(lib);  // RTLD_NOLOAD took a reference; the library stays loaded by pyarrow
  return fn;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) void zerrow_preload_set_pool(arrow::MemoryPool* pool) {
  g_pool.store(pool, std::memory_order_release);
}

extern "C" __attribute__((visibility("default"))) int zerrow_preload_active() { return 1; }

__attribute__((visibility("default"))) arrow::MemoryPool* arrow::default_memory_pool() {
  if (auto* pool = g_pool.load(std::memory_order_acquire)) return pool;
  static DefaultPoolFn real = RealDefaultPool();
  return real ? real() : nullptr;
}
