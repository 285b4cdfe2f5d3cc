import subprocess
import sys
import textwrap

import pytest

from bench.core.errors import UserError
from bench.core.registry import METHODS, DuplicateNameError, Registry, scan_package


def test_lazy_entry_imported_on_first_use():
    r = Registry("toy")
    r.add("sqrt", "math:sqrt")
    assert r.target("sqrt") == "math:sqrt"
    assert r.get("sqrt")(9.0) == 3.0


def test_duplicate_name_raises():
    r = Registry("toy")
    r.add("a", "math:sqrt")
    r.add("a", "math:sqrt")  # same target again is harmless
    with pytest.raises(DuplicateNameError, match="registered twice"):
        r.add("a", "math:floor")


def test_unknown_name_suggests_close_names():
    r = Registry("method")
    r.add("mean_teacher", "math:sqrt")
    r.add("supervised", "math:floor")
    with pytest.raises(UserError, match="did you mean 'mean_teacher'"):
        r.get("mean_techer")


def test_scan_package_reads_decorators_without_import(tmp_path):
    pkg = tmp_path / "toyplugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        textwrap.dedent(
            """
            raise RuntimeError("must not be imported by the scan")
            @register_method("alpha", "alpha_alias")
            class Alpha: ...
            @register_dataset("not_a_method")
            def ds(): ...
            """
        )
    )
    found = scan_package("toyplugins", "register_method", root=pkg)
    assert found == [("alpha", "toyplugins.a:Alpha"), ("alpha_alias", "toyplugins.a:Alpha")]


def test_duplicate_across_files_detected(tmp_path, monkeypatch):
    pkg = tmp_path / "dupplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("@register_method('x')\nclass A: ...\n")
    (pkg / "b.py").write_text("@register_method('x')\nclass B: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = Registry("method", "dupplug", None, "register_method")
    with pytest.raises(DuplicateNameError):
        r.names()


def test_entry_point_plugins_are_loaded(monkeypatch):
    from importlib import metadata

    ep = metadata.EntryPoint(name="third_party", value="math:sqrt", group="bench.toys")
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [ep] if group == "bench.toys" else [])
    r = Registry("toy", None, "bench.toys")
    assert r.names() == ["third_party"]
    assert r.get("third_party")(4.0) == 2.0


def test_builtin_methods_registered():
    for name in ("supervised", "fully", "mean_teacher"):
        assert name in METHODS


def test_list_methods_does_not_import_torch():
    code = "import sys; from bench.cli import main; main(['list', 'methods']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
    line = next(x for x in out.splitlines() if x.startswith("mean_teacher "))
    assert "Tarvainen & Valpola, Mean Teacher, NeurIPS 2017" in line and "[HiLab-git/SSL4MIS]" in line


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_says_its_family_and_paper_and_the_source_reading_agrees(name):
    """What `bench list methods` reads from the source (no import) is what the class holds,
    inherited values included; every method names a family and a paper."""
    from bench.core.registry import static_attributes

    keys = ("family", "paper", "code")
    static = static_attributes(METHODS.target(name), keys)
    cls = METHODS.get(name)
    assert static == {k: getattr(cls, k) for k in keys}
    assert cls.family and cls.paper


def test_static_attributes_follow_imported_bases(tmp_path, monkeypatch):
    (tmp_path / "pkg_a").mkdir()
    (tmp_path / "pkg_a" / "__init__.py").write_text("")
    (tmp_path / "pkg_a" / "base.py").write_text('class Base:\n    family = "f"\n    paper = "p"\n    n = 3\n')
    (tmp_path / "pkg_a" / "child.py").write_text(
        'from pkg_a.base import Base\n\nclass Mid(Base):\n    paper = "mid"\n\nclass Child(Mid):\n    """doc"""\n    code: str = "c"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    from bench.core.registry import static_attributes

    assert static_attributes("pkg_a.child:Child", ("family", "paper", "code", "n")) == {"family": "f", "paper": "mid", "code": "c"}
