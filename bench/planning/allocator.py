"""A model of PyTorch's CUDA caching allocator (c10/cuda/CUDACachingAllocator.cpp, default settings).

- Sizes round up to multiples of 512 bytes (kMinBlockSize), 512 at least.
- Requests of 1 MiB or less (kSmallSize) use the small pool, the rest the large pool.
- A request no cached block can serve gets a new segment (cudaMalloc): 2 MiB for a small request
  (kSmallBuffer), 20 MiB for a large one under 10 MiB (kLargeBuffer, kMinLargeAlloc), else the size
  rounded up to 2 MiB (kRoundLarge).
- The best fit is the smallest free block of the pool that is large enough (then the lowest address).
- A block is split when the rest is 512 bytes or more (small pool) or more than 1 MiB (large pool);
  otherwise the whole block is handed out and counted as allocated.
- A freed block merges with free neighbours of its segment. Nothing is given back (no empty_cache).

allocated = bytes of the blocks handed out; reserved = bytes of the segments (torch.cuda's
memory_allocated / memory_reserved), with their peaks.
"""

import bisect
import itertools
from dataclasses import dataclass, field

MIN_BLOCK = 512
SMALL_SIZE = 1 << 20
SMALL_BUFFER = 2 << 20
LARGE_BUFFER = 20 << 20
MIN_LARGE_ALLOC = 10 << 20
ROUND_LARGE = 2 << 20


def round_size(nbytes: int) -> int:
    return MIN_BLOCK if nbytes < MIN_BLOCK else -(-nbytes // MIN_BLOCK) * MIN_BLOCK


def segment_size(nbytes: int) -> int:
    """The cudaMalloc of a rounded request no cached block serves."""
    if nbytes <= SMALL_SIZE:
        return SMALL_BUFFER
    if nbytes < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-nbytes // ROUND_LARGE) * ROUND_LARGE


@dataclass(eq=False)
class Block:
    segment: int
    offset: int
    size: int
    small: bool
    free: bool = True
    prev: "Block | None" = None
    next: "Block | None" = None

    def key(self) -> tuple[int, int, int]:
        return self.size, self.segment, self.offset


@dataclass
class CachingAllocator:
    """malloc(nbytes) -> Block and free(Block), with allocated/reserved bytes and their peaks."""

    allocated: int = 0
    reserved: int = 0
    peak_allocated: int = 0
    peak_reserved: int = 0
    segments: int = 0
    pools: dict[bool, list] = field(default_factory=lambda: {True: [], False: []})  # small? -> sorted keys
    blocks: dict[tuple, Block] = field(default_factory=dict)  # free blocks by key
    _ids: itertools.count = field(default_factory=itertools.count)

    def _add_free(self, block: Block) -> None:
        block.free = True
        bisect.insort(self.pools[block.small], block.key())
        self.blocks[block.key()] = block

    def _take_free(self, block: Block) -> None:
        keys = self.pools[block.small]
        del keys[bisect.bisect_left(keys, block.key())]
        del self.blocks[block.key()]

    def malloc(self, nbytes: int) -> Block:
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        keys = self.pools[small]
        at = bisect.bisect_left(keys, (size, -1, -1))
        if at < len(keys):
            block = self.blocks[keys[at]]
            self._take_free(block)
        else:
            block = Block(next(self._ids), 0, segment_size(size), small)
            self.segments += 1
            self.reserved += block.size
            self.peak_reserved = max(self.peak_reserved, self.reserved)
        rest = block.size - size
        if rest >= MIN_BLOCK if small else rest > SMALL_SIZE:
            tail = Block(block.segment, block.offset + size, rest, small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = tail
            block.next, block.size = tail, size
            self._add_free(tail)
        block.free = False
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        return block

    def free(self, block: Block) -> None:
        self.allocated -= block.size
        for neighbour in (block.prev, block.next):
            if neighbour is not None and neighbour.free:
                self._take_free(neighbour)
                self._merge(block, neighbour)
        self._add_free(block)

    @staticmethod
    def _merge(block: Block, neighbour: Block) -> None:
        if neighbour is block.prev:
            block.offset, block.prev = neighbour.offset, neighbour.prev
            if neighbour.prev is not None:
                neighbour.prev.next = block
        else:
            block.next = neighbour.next
            if neighbour.next is not None:
                neighbour.next.prev = block
        block.size += neighbour.size

    def reset_peaks(self) -> None:
        """As torch.cuda.reset_peak_memory_stats: the peaks start again from what is held now."""
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved
