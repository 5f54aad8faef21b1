"""Class halves: the study's random halves exactly, explicit lists, and clear errors."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess

import pytest

from transferability import params as tparams
from transferability import runs, stages
from transferability.data.splits import REFERENCE, check_split, make_split, random_half
from transferability.errors import UserError

from .conftest import ENV, ROOT

IMAGENET_PROFILE = ROOT / "workflow" / "params" / "imagenet.yaml"

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


# The md5s the study's make_reduced_datasets.sh ends with, for its validation lists (data/half*_valid/files.txt).
# Its train lists need ILSVRC-2012's train list (whole_train/files.txt), which is not shipped: not checked here.
STUDY_VALID_MD5 = {
    "whole": "b6284a7c08fba47457c2c1f6049a156e",
    "random0A": "2f10009e20d77eb7007cf70674958b94", "random0B": "cce39b383d681345c873faf2c0c28d33",
    "random1A": "9ab48b6420504e32ff4498e7d8569f8b", "random1B": "57522f5e2aa69547846089f5197c8a6b",
    "random2A": "03d05b6565ab9176baccdd05d746bfd1", "random2B": "18de8b37378e07e60dc602b6130eeeb2",
    "random3A": "46086440ddde128f169f23331998499d", "random3B": "e5f9f0895fd0d49a8ac0b804ec891282",
    "natmanA": "4fb63c72229ba07106a558127192cb9f", "natmanB": "f03be5732fb6bc7928ee53397b043613",
}


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_the_studys_validation_lists_come_out_byte_for_byte(tmp_path, monkeypatch):
    """The README's command for every split of the ImageNet profile: all ten lists equal the study's."""
    monkeypatch.chdir(tmp_path)
    assert hashlib.md5(gzip.open(REFERENCE / "whole_valid_files.txt.gz").read()).hexdigest() == STUDY_VALID_MD5["whole"]
    params = tparams.load(IMAGENET_PROFILE)
    for split in ("random0", "random1", "random2", "random3", "natman"):
        stages.split_lists(params, split, ["whole_valid_files.txt"])
    got = {half.name: md5(half / "whole_valid_files.txt") for half in (tmp_path / runs.STUDY_LISTS).iterdir()}
    assert got == {k: v for k, v in STUDY_VALID_MD5.items() if k != "whole"}
    idxmap = (tmp_path / runs.STUDY_LISTS / "natmanA" / "idxmap.txt").read_text().splitlines()
    assert idxmap[:3] == ["# Orig_idx new_idx", "0 0", "1 1"] and len(idxmap) == 1 + 449
    ws = tmp_path / "ws"  # the README's command, exactly as typed, from a project root
    (ws / "workflow" / "params").mkdir(parents=True)
    shutil.copy(IMAGENET_PROFILE, ws / "workflow" / "params")
    shutil.copy(ROOT / "params.yaml", ws)  # what the profile extends
    proc = subprocess.run("transferability --params workflow/params/imagenet.yaml split --split random0 "
                          "--lists whole_valid_files.txt", shell=True, cwd=ws, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"data/splits/lists/random0A/whole_valid_files.txt: 25000 lines, md5 {STUDY_VALID_MD5['random0A']}",
        f"data/splits/lists/random0B/whole_valid_files.txt: 25000 lines, md5 {STUDY_VALID_MD5['random0B']}"]
    assert md5(ws / "data/splits/lists/random0B/whole_valid_files.txt") == STUDY_VALID_MD5["random0B"]


def test_a_bad_list_line_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("a.JPEG 3\nb.JPEG 1000\n")
    with pytest.raises(UserError, match=r"mine.txt, line 2: expected 'FILE IDX' with IDX in 0..999, got 'b.JPEG 1000'"):
        stages.split_lists(tparams.load(IMAGENET_PROFILE), "random0", ["mine.txt"])
    assert not (tmp_path / "data").exists()
