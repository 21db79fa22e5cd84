"""ldae.seeds: the derivations against hand computation, the old inline formulas (runs made before
the module replay bit for bit), and the batch-split invariance of ``Rows``/``sharded``."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from ldae import seeds


def test_mix_is_base_p_folding_by_hand():
    assert seeds.P == 1_000_003
    assert seeds.mix(0) == 0 and seeds.mix(5) == 5
    assert seeds.mix(2, 3) == 2_000_009  # 2 * 1_000_003 + 3
    assert seeds.mix(1, 2, 3) == (1_000_003 + 2) * 1_000_003 + 3 == 1_000_008_000_018


@pytest.mark.parametrize("seed,step,stream", [(0, 0, 0), (3, 351, 1), (12345, 10 ** 6, 1)])
def test_pretrain_seed_equals_the_first_releases_formula(seed, step, stream):
    assert seeds.pretrain_seed(seed, step, stream) == (seed * 1_000_003 + step) * 2 + stream


@pytest.mark.parametrize("seed,step,rank,stream", [(0, 0, 0, 11), (7, 99, 3, 12), (2 ** 40, 5, 1, 11)])
def test_finetune_seed_equals_the_first_releases_formula_and_fits_numpy(seed, step, rank, stream):
    s = seeds.finetune_seed(seed, step, rank, stream)
    assert s == (((seed * 1_000_003 + step) * 1_009 + rank) * 31 + stream) % (2 ** 32)
    assert 0 <= s < 2 ** 32


@pytest.mark.parametrize("seed,stream,step", [(0, 1, 0), (4, 5, 77), (2 ** 50, 3, 2 ** 20)])
def test_probe_seed_equals_the_first_releases_formula_and_fits_torch(seed, stream, step):
    s = seeds.probe_seed(seed, stream, step)
    assert s == ((seed * 1_000_003 + stream) * 1_000_003 + step) % (2 ** 63)
    torch.Generator().manual_seed(s)  # in range


def test_distinct_coordinates_give_distinct_seeds():
    got = {seeds.pretrain_seed(s, k, st) for s in range(3) for k in range(50) for st in (0, 1)}
    assert len(got) == 3 * 50 * 2
    got = {seeds.finetune_seed(0, k, r, st) for k in range(50) for r in range(4) for st in (11, 12)}
    assert len(got) == 50 * 4 * 2


def test_generator_is_seeded_with_the_derived_value():
    a = torch.rand(4, generator=seeds.generator(seeds.mix(3, 9)))
    b = torch.rand(4, generator=torch.Generator().manual_seed(3 * 1_000_003 + 9))
    assert torch.equal(a, b)


@pytest.mark.parametrize("world,micro", [(1, 1), (2, 1), (2, 2), (4, 2)])
def test_rows_and_sharded_give_each_row_the_same_draw_however_the_batch_is_split(world, micro):
    total = 16
    full = torch.rand(total, generator=seeds.generator(5))
    size = total // world // micro
    got = torch.empty(total)
    for rank in range(world):
        for m in range(micro):
            rows = seeds.Rows.of(total, rank, world, m, size)
            part = seeds.sharded(lambda n: torch.rand(n, generator=seeds.generator(5)), size, rows)
            got[rows.index] = part
    assert torch.equal(got, full)


def test_the_seed_formula_is_written_only_in_the_seeds_module():
    src = Path(seeds.__file__).parent
    hits = [str(p.relative_to(src)) for p in src.rglob("*.py")
            if p.name != "seeds.py" and re.search(r"1_?000_?003", p.read_text())]
    assert hits == []
