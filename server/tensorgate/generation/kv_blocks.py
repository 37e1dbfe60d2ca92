"""The paged KV cache's bookkeeping: a pool of fixed-size blocks, block tables, prefix cache.

Pure and synchronous (no tensors here): the model reads and writes the KV tensors at the
slots these tables give. As in vLLM v1:

- Memory is a pool of blocks of `block_size` token slots. A sequence holds a block table,
  the blocks its tokens occupy in order, and allocates a block only when it needs one.
- A full block is identified by a hash of its tokens and of every token before it (the hash
  of the block before, chained). A new sequence whose prompt starts with the same tokens
  reuses those blocks instead of computing them again (prefix caching).
- Blocks are reference counted. A block nobody holds goes to the free list but keeps its
  hash, so a later prompt can still hit it; the least recently freed is evicted first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class Block:
    """One block of KV slots: `id` indexes the cache tensors."""

    id: int
    ref: int = 0
    hash: int | None = None  # set once the block is full and its tokens are known


def block_hashes(tokens: Sequence[int], block_size: int) -> list[int]:
    """The chained hash of each full block of `tokens`."""
    hashes: list[int] = []
    parent = 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash((parent, tuple(tokens[start : start + block_size])))
        hashes.append(parent)
    return hashes


class BlockPool:
    """Every block, the free ones in eviction order, and the cached ones by hash."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("a KV cache needs at least one block of at least one slot")
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        # ref == 0, least recently freed first; cached ones keep their hash until evicted.
        self.free: OrderedDict[int, Block] = OrderedDict((b.id, b) for b in self.blocks)
        self.cached: dict[int, Block] = {}

    @property
    def num_free(self) -> int:
        return len(self.free)

    def allocate(self) -> Block:
        """A block for new tokens: the least recently freed, its cached contents dropped."""
        _, block = self.free.popitem(last=False)
        if block.hash is not None:
            self.cached.pop(block.hash, None)
            block.hash = None
        block.ref = 1
        return block

    def hold(self, block: Block) -> None:
        """One more holder of a (cached) block."""
        if block.ref == 0:
            del self.free[block.id]
        block.ref += 1

    def release(self, block: Block) -> None:
        """One holder fewer; at none the block is free, its cached contents kept."""
        block.ref -= 1
        if block.ref == 0:
            self.free[block.id] = block

    def cache(self, block: Block, block_hash: int) -> None:
        """A full block's contents are known: later prompts may reuse it."""
        if block.hash is None and block_hash not in self.cached:
            block.hash = block_hash
            self.cached[block_hash] = block


@dataclass(slots=True)
class PrefixStats:
    """Prompt tokens looked up in the prefix cache, and how many were found."""

    queried: int = 0
    hit: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit / self.queried if self.queried else 0.0


@dataclass(slots=True)
class _Table:
    blocks: list[Block] = field(default_factory=list)
    hashed: int = 0  # leading blocks already hashed and cached


class KVCacheManager:
    """Block tables of the running sequences over one pool."""

    def __init__(self, pool: BlockPool, prefix_caching: bool = True) -> None:
        self.pool = pool
        self.block_size = pool.block_size
        self.prefix_caching = prefix_caching
        self.tables: dict[str, _Table] = {}
        self.stats = PrefixStats()

    def cached_prefix(self, tokens: Sequence[int]) -> list[Block]:
        """The cached blocks that `tokens` starts with. At least the last token is left out:
        the model must compute one token to produce the next."""
        if not self.prefix_caching:
            return []
        hashes = block_hashes(tokens[: len(tokens) - 1], self.block_size)
        found: list[Block] = []
        for block_hash in hashes:
            block = self.pool.cached.get(block_hash)
            if block is None:
                break
            found.append(block)
        self.stats.queried += len(tokens)
        self.stats.hit += len(found) * self.block_size
        return found

    def allocate(self, seq_id: str, num_tokens: int, prefix: Sequence[Block] = ()) -> bool:
        """Make the sequence's table cover `num_tokens` slots, starting from `prefix` for a new
        one. False, with nothing changed, when the pool has too few free blocks."""
        table = self.tables.get(seq_id)
        held = len(table.blocks) if table is not None else 0
        needed = -(-num_tokens // self.block_size) - held - (len(prefix) if table is None else 0)
        evictable_prefix = sum(1 for b in prefix if b.ref == 0) if table is None else 0
        if needed > self.pool.num_free - evictable_prefix:
            return False
        if table is None:
            table = self.tables[seq_id] = _Table()
            for block in prefix:
                self.pool.hold(block)
            table.blocks.extend(prefix)
            table.hashed = len(prefix)
        for _ in range(max(needed, 0)):
            table.blocks.append(self.pool.allocate())
        return True

    def block_ids(self, seq_id: str) -> list[int]:
        return [b.id for b in self.tables[seq_id].blocks]

    def cache_full_blocks(self, seq_id: str, tokens: Sequence[int], computed: int) -> None:
        """The first `computed` tokens' KV is written: cache the full blocks among them."""
        if not self.prefix_caching:
            return
        table = self.tables[seq_id]
        full = computed // self.block_size
        if full <= table.hashed:
            return
        hashes = block_hashes(tokens[: full * self.block_size], self.block_size)
        for index in range(table.hashed, full):
            self.pool.cache(table.blocks[index], hashes[index])
        table.hashed = full

    def free(self, seq_id: str) -> None:
        """Release the sequence's blocks, the last ones first: they are the least likely to
        be shared, so they should be evicted before its prefix."""
        table = self.tables.pop(seq_id, None)
        if table is None:
            return
        for block in reversed(table.blocks):
            self.pool.release(block)

    @property
    def usage(self) -> float:
        """Share of the pool's blocks held by sequences."""
        return 1.0 - self.pool.num_free / len(self.pool.blocks)
