// A CPU stand-in for the part of CUDA's execution model that csrc/nms_cuda_kernels.cuh uses, so
// that the NMS kernels run, and are tested, on machines without a GPU.
//
// Each CUDA thread of a block is a fiber (ucontext) with its own stack; a scheduler resumes them
// one at a time. A fiber runs until it reaches a barrier: __syncthreads (all threads of the block)
// or a warp shuffle (the 32 lanes of its warp); the last thread to arrive releases the others.
// The scheduler then resumes one runnable fiber, chosen by the block's policy (drawn per block
// from a fixed seed sequence): half of the blocks pick at random, the others run the runnable
// fiber of highest priority, priorities ordered warp by warp and drawn anew at every
// __syncthreads, so that one warp runs through all its shuffles up to the next __syncthreads
// before any other warp moves. A result that depends on which thread ran first (a data race)
// then differs from run to run and from the CPU backend's.
//
// A shuffle stores the lane's value in a slot of its warp, waits for the warp and reads the
// source lane's slot; the slots alternate between two sets so that a lane that is already at the
// next shuffle cannot overwrite a value still to be read. __shared__ variables are static (blocks
// run one after another and share no memory); the __f*_rn intrinsics are the plain IEEE
// operations (compiled with -ffp-contract=off, like nvcc's --fmad=false).
//
// Errors of a launch (returned, never a hang): threads released from one barrier that called it
// from different lines (undefined on a GPU), threads that exit while others wait at a barrier or
// that all wait with none of the barriers complete (a deadlock on a GPU), shuffles without the
// full mask.
//
// Not emulated: nvcc's code generation, warp-synchronous code without shuffles, several blocks at
// a time.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

struct EmulatedDim3 {
  unsigned x = 0;
};
inline EmulatedDim3 threadIdx;  // of the fiber running now (one runs at a time)
inline EmulatedDim3 blockIdx;

namespace cuda_on_cpu {

enum class State { kRunnable, kAtSyncthreads, kAtShuffle, kDone };

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  State state = State::kRunnable;
  int site = 0;               // the line of the barrier it waits at
  unsigned shuffles = 0;      // shuffles done: picks the slot set
};

class Block {
 public:
  static constexpr std::size_t kStackBytes = 128 * 1024;

  Block(int threads, std::uint32_t seed)
      : fibers_(threads),
        slots_(2 * (threads / 32)),
        at_shuffle_(threads / 32),
        random_(seed),
        by_priority_(random_() & 1),
        priority_(threads) {
    draw_priorities();
  }

  // Runs body() on every thread of the block; returns the first error, or "".
  std::string run(std::function<void()> body);

  // Called by the running fiber: wait at a barrier (the last to arrive releases it), then go on.
  void wait(State barrier, int site) {
    Fiber& me = fibers_[running_];
    me.state = barrier;
    me.site = site;
    if (barrier == State::kAtSyncthreads && ++at_syncthreads_ == static_cast<int>(fibers_.size())) {
      at_syncthreads_ = 0;
      draw_priorities();
      release(0, static_cast<int>(fibers_.size()));
    } else if (barrier == State::kAtShuffle && ++at_shuffle_[running_ / 32] == 32) {
      at_shuffle_[running_ / 32] = 0;
      release(running_ / 32 * 32, 32);
    }
    swapcontext(&me.context, &scheduler_);
  }

  // Lane `source`'s value of the warp's current shuffle (the caller's own outside the warp).
  template <class T>
  T shuffle(unsigned mask, T value, int source, int site) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= sizeof(std::uint64_t),
                  "shuffles of up to 8 bytes are emulated");
    if (mask != 0xffffffffu) report("a shuffle without the full mask at line " + std::to_string(site));
    const int lane = threadIdx.x & 31;
    Fiber& me = fibers_[running_];
    auto& slots = slots_[2 * (threadIdx.x >> 5) + (me.shuffles++ & 1)];
    std::memcpy(&slots[lane], &value, sizeof(T));
    wait(State::kAtShuffle, site);
    T result = value;
    if (source >= 0 && source < 32) std::memcpy(&result, &slots[source], sizeof(T));
    return result;
  }

 private:
  static void fiber_main();
  void report(const std::string& message) {
    if (error_.empty()) error_ = message;
  }
  void release(int first, int count);  // the threads [first, first + count), all at one barrier
  int pick_runnable();                 // removes the fiber to run next from runnable_
  void draw_priorities();              // warp-major: every lane of a warp above the next warp

  std::vector<Fiber> fibers_;
  std::vector<std::array<std::uint64_t, 32>> slots_;  // two sets per warp
  int at_syncthreads_ = 0;                             // threads waiting at __syncthreads
  std::vector<int> at_shuffle_;                        // per warp, lanes waiting at a shuffle
  std::vector<int> runnable_;
  std::mt19937 random_;
  const bool by_priority_;  // the policy: highest priority first, or at random
  std::vector<int> priority_;
  ucontext_t scheduler_;
  std::function<void()> body_;
  int running_ = -1;
  std::string error_;
};

inline Block* current_block = nullptr;

inline void Block::fiber_main() {
  Block& block = *current_block;
  block.body_();
  block.fibers_[block.running_].state = State::kDone;  // returning resumes the scheduler (uc_link)
}

inline void Block::release(int first, int count) {
  const State barrier = fibers_[first].state;
  for (int t = first; t < first + count; ++t) {
    if (fibers_[t].site != fibers_[first].site)
      report(std::string(barrier == State::kAtShuffle ? "one warp's shuffle" : "__syncthreads") +
             " reached from different lines: " + std::to_string(fibers_[first].site) + " and " +
             std::to_string(fibers_[t].site));
    fibers_[t].state = State::kRunnable;
    runnable_.push_back(t);
  }
}

inline void Block::draw_priorities() {
  const int warps = static_cast<int>(fibers_.size()) / 32;
  std::vector<int> warp_rank(warps), lane_rank(32);
  for (int w = 0; w < warps; ++w) warp_rank[w] = w;
  for (int l = 0; l < 32; ++l) lane_rank[l] = l;
  std::shuffle(warp_rank.begin(), warp_rank.end(), random_);
  for (int w = 0; w < warps; ++w) {
    std::shuffle(lane_rank.begin(), lane_rank.end(), random_);
    for (int l = 0; l < 32; ++l) priority_[32 * w + l] = 32 * warp_rank[w] + lane_rank[l];
  }
}

inline int Block::pick_runnable() {
  std::size_t pick = 0;
  if (by_priority_) {
    for (std::size_t k = 1; k < runnable_.size(); ++k)
      if (priority_[runnable_[k]] > priority_[runnable_[pick]]) pick = k;
  } else {
    pick = std::uniform_int_distribution<std::size_t>(0, runnable_.size() - 1)(random_);
  }
  const int chosen = runnable_[pick];
  runnable_[pick] = runnable_.back();
  runnable_.pop_back();
  return chosen;
}

inline std::string Block::run(std::function<void()> body) {
  body_ = std::move(body);
  current_block = this;
  const int threads = static_cast<int>(fibers_.size());
  for (int t = 0; t < threads; ++t) {
    Fiber& fiber = fibers_[t];
    fiber.stack.reset(new char[kStackBytes]);
    getcontext(&fiber.context);
    fiber.context.uc_stack.ss_sp = fiber.stack.get();
    fiber.context.uc_stack.ss_size = kStackBytes;
    fiber.context.uc_link = &scheduler_;
    makecontext(&fiber.context, &Block::fiber_main, 0);
    runnable_.push_back(t);
  }
  while (!runnable_.empty()) {
    running_ = pick_runnable();
    threadIdx.x = static_cast<unsigned>(running_);
    swapcontext(&scheduler_, &fibers_[running_].context);
  }
  const auto waiting = std::find_if(fibers_.begin(), fibers_.end(),
                                    [](const Fiber& f) { return f.state != State::kDone; });
  if (waiting != fibers_.end()) {  // the waiting fibers are abandoned: their stacks hold no objects
    const auto done = std::count_if(fibers_.begin(), fibers_.end(),
                                    [](const Fiber& f) { return f.state == State::kDone; });
    report("deadlock: " + std::to_string(done) + " of " + std::to_string(threads) +
           " threads exited, thread " + std::to_string(waiting - fibers_.begin()) +
           " waits forever at the barrier of line " + std::to_string(waiting->site));
  }
  current_block = nullptr;
  return error_;
}

inline std::uint32_t next_seed = 20240607;  // a new scheduling order for every launch

// Runs kernel(args...) on `grid` blocks of `threads` threads; returns the first error, or "".
template <class... Params, class... Args>
std::string launch(void (*kernel)(Params...), unsigned grid, unsigned threads, Args... args) {
  for (unsigned b = 0; b < grid; ++b) {
    blockIdx.x = b;
    Block block(static_cast<int>(threads), next_seed++);
    const std::string error = block.run([&] { kernel(args...); });
    if (!error.empty()) return "block " + std::to_string(b) + ": " + error;
  }
  return "";
}

inline void sync_block(int site) { current_block->wait(State::kAtSyncthreads, site); }

}  // namespace cuda_on_cpu

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() ::cuda_on_cpu::sync_block(__LINE__)
#define __shfl_down_sync(mask, value, delta)                                                  \
  ::cuda_on_cpu::current_block->shuffle((mask), (value),                                     \
                                        static_cast<int>(threadIdx.x & 31) + (delta), __LINE__)
#define __shfl_up_sync(mask, value, delta)                                                    \
  ::cuda_on_cpu::current_block->shuffle((mask), (value),                                     \
                                        static_cast<int>(threadIdx.x & 31) - (delta), __LINE__)

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
using std::exp;
using std::isnan;
