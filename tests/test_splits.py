import pytest

from bench.core.errors import UserError
from datasets.splits import Split, draw_split, parse_fraction


def test_leakage_is_an_error():
    s = Split("s", ["a", "b"], ["c"], ["d"], ["b"])
    with pytest.raises(UserError, match="case 'b' in both 'labeled' and 'test'"):
        s.validate()


def test_missing_case_is_an_error():
    s = Split("s", ["a"], ["c"], [], ["zz"])
    with pytest.raises(UserError, match="case 'zz' .*not in the dataset"):
        s.validate(["a", "c"])


@pytest.mark.parametrize("text,value", [("10%", 0.1), ("0.2", 0.2), ("5", 0.05), ("100%", 1.0)])
def test_parse_fraction(text, value):
    assert parse_fraction(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["0%", "0", "150%", "-5%", "abc"])
def test_parse_fraction_rejects(text):
    with pytest.raises(UserError):
        parse_fraction(text)


def test_draw_is_deterministic_and_disjoint():
    train = [f"c{i}" for i in range(20)]
    a = draw_split(train, ["e"], ["t"], 0.1, seed=0)
    b = draw_split(train, ["e"], ["t"], 0.1, seed=0)
    assert a.labeled == b.labeled and len(a.labeled) == 2 and len(a.unlabeled) == 18
    assert not set(a.labeled) & set(a.unlabeled)
    a.validate(train + ["e", "t"])
    assert draw_split(train, ["e"], ["t"], 0.1, seed=1).labeled != a.labeled


def test_save_load_roundtrip(tmp_path):
    s = Split("x", ["a"], ["b"], ["c"], ["d"])
    s.save(tmp_path / "x.json")
    t = Split.load(tmp_path / "x.json")
    assert t.digest() == s.digest() and t.name == "x"


def test_load_rejects_bad_files(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        Split.load(tmp_path / "bad.json")
    (tmp_path / "keys.json").write_text('{"labeled": []}')
    with pytest.raises(UserError, match="lacks the key"):
        Split.load(tmp_path / "keys.json")


def test_a_subset_import_keeps_only_its_own_cases_of_a_published_split():
    """amos_ct (AMOS without MRI, ids >= 500) takes AMOS' published splits restricted to its cases."""
    from datasets.splits import ROLES, published_split

    full = published_split("amos", "dhc_5p")
    every = [c for r in ROLES for c in getattr(full, r)]
    ct_ids = [c for c in every if int(c.split("_")[-1]) < 500]
    assert len(ct_ids) < len(every)  # the published lists hold MRI cases
    ct = published_split("amos_ct", "dhc_5p", ct_ids)
    assert sorted(c for r in ROLES for c in getattr(ct, r)) == sorted(ct_ids)
    assert published_split("amos", "dhc_5p", ct_ids).test == full.test  # the full dataset is never cut
