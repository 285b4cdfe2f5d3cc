import json
import os

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.core.errors import UserError
from bench.core.labels import AMOS_15, BTCV_13
from priors.cache import cache_key, prior_embeddings
from priors.encoders import HashEncoder, get_encoder
from priors.prompts import PromptSet, load_prompt_set
from tests.conftest import SHARED

TAK_FILE = SHARED / "reference" / "tak_official" / "amos_embedding_shape_location.pth"


def _ps(**over):
    data = {"format": "bench-prompts/1", "name": "t", "views": ["location", "shape"],
            "classes": {"background": {"location": "bg", "shape": "none"}, "IVC": {"location": "right of aorta", "shape": "tube"},
                        "liver": {"location": ["right upper", "under diaphragm"], "shape": "wedge"}}}
    data.update(over)
    return PromptSet.from_dict(data, "t.json")


def test_shipped_sets_cover_btcv_and_amos():
    for name in ("anatomy", "location_only", "shape_only", "names"):
        ps = load_prompt_set(name)
        for labels in (BTCV_13, AMOS_15):
            texts = ps.texts_for(labels)
            assert len(texts) == len(ps.views) and all(len(v) == len(labels) for v in texts)
    assert load_prompt_set("anatomy").views == ("location", "shape")
    assert load_prompt_set("location_only").views == ("location",)
    assert load_prompt_set("names").texts_for(["liver"]) == [[["A computerized tomography of a liver"]]]


def test_alias_matching_and_missing_class():
    ps = _ps()
    texts = ps.texts_for(["background", "inferior vena cava", "Liver"])
    assert texts[0][1] == ["right of aorta"] and texts[0][2] == ["right upper", "under diaphragm"]
    assert ps.texts_for(["postcava"])[1] == [["tube"]]
    with pytest.raises(UserError, match="no description of class 'spleen'"):
        ps.texts_for(["spleen"])


@pytest.mark.parametrize(
    "over,msg",
    [({"format": "x"}, "field 'format'"), ({"views": []}, "field 'views'"),
     ({"classes": {"liver": {"location": "x"}}}, "class 'liver' has no text for view 'shape'"),
     ({"classes": {"liver": {"location": "x", "shape": ""}}}, "class 'liver' has no text for view 'shape'"),
     ({"classes": {"liver": {"location": "x", "shape": "y", "size": "z"}}}, "not listed in 'views'"),
     ({"classes": {"IVC": {"location": "a", "shape": "b"}, "postcava": {"location": "a", "shape": "b"}}}, "described twice"),
     ({"template": "no placeholder"}, "field 'template'")],
)
def test_validation_names_field_and_class(over, msg):
    with pytest.raises(UserError, match=msg):
        _ps(**over)


def test_hash_encoder_is_deterministic_and_unit_norm():
    e = HashEncoder(dim=16)
    a, b = e.encode(["liver", "spleen"]), e.encode(["liver", "spleen"])
    assert torch.equal(a, b) and a.shape == (2, 16)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(2))
    assert not torch.equal(a[0], a[1])
    assert get_encoder("hash:32").dim == 32


def test_minilm_is_real_and_offline():
    enc = get_encoder("minilm")
    v = enc.encode(["the left kidney", "the right kidney", "a brightly enhancing aorta"])
    assert v.shape == (3, 384) and enc.dim == 384
    v = torch.nn.functional.normalize(v, dim=1)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])  # real semantics: kidneys closer to each other


def test_prior_layout_views_then_classes():
    ps = _ps()
    enc = HashEncoder(dim=8)
    emb = prior_embeddings(ps, enc, ["background", "IVC", "liver"], use_cache=False)
    assert emb.shape == (6, 8)
    torch.testing.assert_close(emb[1], enc.encode(["right of aorta"])[0])  # view 0, class 1
    torch.testing.assert_close(emb[5], enc.encode(["wedge"])[0])  # view 1, class 2
    torch.testing.assert_close(emb[2], enc.encode(["right upper", "under diaphragm"]).mean(0))  # averaged


def test_cache_is_used_and_never_stale(monkeypatch):
    ps = _ps()
    enc = HashEncoder(dim=8)
    classes = ["background", "IVC", "liver"]
    first = prior_embeddings(ps, enc, classes)
    monkeypatch.setattr(enc, "encode", lambda texts: (_ for _ in ()).throw(AssertionError("cache missed")))
    torch.testing.assert_close(prior_embeddings(ps, enc, classes), first)
    changed = _ps(classes={"background": {"location": "bg", "shape": "none"}, "IVC": {"location": "CHANGED", "shape": "tube"},
                           "liver": {"location": "x", "shape": "wedge"}})
    assert cache_key(changed, enc.weights_id, classes) != cache_key(ps, enc.weights_id, classes)
    with pytest.raises(AssertionError, match="cache missed"):
        prior_embeddings(changed, enc, classes)


def test_tak_released_tensor_loads_in_amos_order():
    if not TAK_FILE.exists():
        pytest.skip("shared reference file not present")
    emb = prior_embeddings("anatomy", f"file:{TAK_FILE}", AMOS_15)
    assert emb.shape == (32, 512)
    raw = torch.load(TAK_FILE, map_location="cpu", weights_only=True).float()
    assert torch.equal(emb, raw)  # rows 0-15 location (bg + 15 AMOS organs), 16-31 shape
    norms = emb.norm(dim=1)
    assert float(norms.min()) > 3.0  # not L2-normalised, as released
    with pytest.raises(UserError, match="not a multiple of the 14 classes"):
        prior_embeddings("anatomy", f"file:{TAK_FILE}", BTCV_13)


def _tiny_clip(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "bench-tiny-clip.json").write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(0)
    model = open_clip.create_model("bench-tiny-clip")
    ckpt = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return model, ckpt, open_clip


def test_clip_loads_a_local_checkpoint_through_the_real_path(tmp_path):
    model, ckpt, open_clip = _tiny_clip(tmp_path)
    enc = get_encoder(f"clip:bench-tiny-clip:{ckpt}")
    assert enc.dim == 32
    texts = ["A computerized tomography of a liver", "A computerized tomography of a spleen"]
    with torch.no_grad():
        expected = model.encode_text(open_clip.get_tokenizer("bench-tiny-clip")(texts)).float()
    torch.testing.assert_close(enc.encode(texts), expected)
    assert enc.weights_id.startswith("clip:bench-tiny-clip@")


def test_clip_errors_are_one_clear_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        get_encoder(f"clip:ViT-B-32:{tmp_path / 'missing.pt'}")
    with pytest.raises(UserError, match="unknown open_clip model"):
        get_encoder("clip:NoSuchModel-99:none")
    os.environ["HF_HUB_OFFLINE"] = "1"
    with pytest.raises(UserError, match="weights cannot be"):
        get_encoder("clip:ViT-B-32:openai")


def test_cli_priors_show_and_encode(capsys):
    assert main(["priors", "show", "anatomy", "--text-encoder", "hash", "--labels", "synapse"]) == 0
    out = capsys.readouterr().out
    assert "[location]" in out and "cosine similarity" in out and "right kidney ~ left kidney" in out
    assert main(["priors", "encode", "--prompts", "location_only", "--text-encoder", "hash:64", "--labels", "amos"]) == 0
    assert "(16, 64)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,msg",
    [(["priors", "show", "anatomi"], "did you mean 'anatomy'"),
     (["priors", "encode", "--text-encoder", "minilmm"], "did you mean 'minilm'"),
     (["priors", "show", "anatomy", "--labels", "nope"], "give synapse, amos")],
)
def test_priors_bad_names(capsys, argv, msg):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and msg in err and len(err.splitlines()) == 1


def test_bad_prompt_file_names_field(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "bench-prompts/1", "name": "b", "views": ["v"], "classes": {"liver": {"v": 3}}}))
    assert main(["priors", "show", str(bad), "--text-encoder", "hash"]) == 2
    err = capsys.readouterr().err
    assert "class 'liver' has no text for view 'v'" in err


def test_cosine_matrix_of_anatomy_separates_organs():
    from priors.cli import cosine_matrix

    emb = prior_embeddings("anatomy", "minilm", BTCV_13)
    sim = cosine_matrix(emb, len(BTCV_13)).numpy()
    rk, lk, ao = BTCV_13.index("right kidney"), BTCV_13.index("left kidney"), BTCV_13.index("aorta")
    assert sim[rk, lk] > sim[rk, ao]
    assert np.allclose(np.diag(sim), 1.0, atol=1e-5)
