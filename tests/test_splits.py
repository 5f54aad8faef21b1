"""Class halves: the study's random halves exactly, explicit lists, and clear errors."""

from __future__ import annotations

import pytest

from transferability.errors import UserError
from transferability.splits import REFERENCE, check_split, make_split, random_half

IMAGENET = [{"index": i, "id": wnid, "name": wnid}
            for i, wnid in enumerate((REFERENCE / "synsets.txt").read_text().split())]
FMNIST = [{"index": i, "id": str(i), "name": n} for i, n in enumerate(
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"])]


@pytest.mark.parametrize(("seed", "first", "total"), [
    (0, [0, 1, 2, 5, 9, 10, 15, 16], 249620),
    (1, [1, 5, 7, 9], 249563),
])
def test_random_halves_are_the_studys(seed, first, total):
    a = random_half(1000, seed)
    assert len(a) == 500
    assert a[: len(first)] == first
    assert sum(a) == total


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_split_is_disjoint_covering_and_renumbered_in_order(seed):
    split = make_split(f"random{seed}", {"method": "random", "seed": seed}, IMAGENET)
    a, b = split["A"]["indices"], split["B"]["indices"]
    assert not set(a) & set(b)
    assert sorted(a + b) == list(range(1000))
    assert a == sorted(a) and b == sorted(b)  # position in the list = the new class number
    assert split["A"]["ids"][0] == IMAGENET[a[0]]["id"]
    check_split(split)


def test_natural_man_made_lists_from_the_study():
    split = make_split("natman", {"method": "lists", "A": {"file": "half_nat_idx.txt"},
                                  "B": {"file": "half_man_idx.txt"}}, IMAGENET)
    assert len(split["A"]["indices"]) == 449 and len(split["B"]["indices"]) == 551


def test_lists_by_name_id_and_index():
    split = make_split("d", {"method": "lists", "A": ["T-shirt/top", "2", 3, "Coat", "Shirt"],
                             "B": ["Trouser", "Sandal", "Sneaker", "Bag", "Ankle boot"]}, FMNIST)
    assert split["A"]["indices"] == [0, 2, 3, 4, 6]
    assert split["A"]["names"] == ["T-shirt/top", "Pullover", "Dress", "Coat", "Shirt"]


@pytest.mark.parametrize(("a", "b", "message"), [
    (["Trouser", "Bag"], ["Bag", "Coat"], "halves A and B overlap in 1 classes (Bag)"),
    (["Trouser"], ["Bag"], "8 classes are in neither half (T-shirt/top"),
    (["Trousers"], ["Bag"], "unknown class 'Trousers'"),
    ([42], ["Bag"], "class index 42 is outside 0..9"),
    (["Bag", "Bag"], ["Coat"], "classes listed twice: Bag"),
])
def test_bad_lists_are_refused(a, b, message):
    with pytest.raises(UserError, match="splits.bad"):
        make_split("bad", {"method": "lists", "A": a, "B": b}, FMNIST)
    with pytest.raises(UserError) as err:
        make_split("bad", {"method": "lists", "A": a, "B": b}, FMNIST)
    assert message in str(err.value)


def test_a_hand_edited_split_is_refused():
    split = make_split("random0", {"method": "random", "seed": 0}, FMNIST)
    split["B"]["indices"].append(split["A"]["indices"][0])
    with pytest.raises(UserError, match="checksum mismatch"):
        check_split(split)
