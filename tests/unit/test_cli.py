"""CLI behaviour that needs no cluster: bad input is one line on stderr and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from netk8s.cli.main import main, split_command


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_topology_with_a_typo_is_rejected_naming_the_path(tmp_path: Path, capsys) -> None:
    topo = tmp_path / "topo.yaml"
    topo.write_text("apiVersion: netk8s.io/v1alpha1\nkind: Cluster\nnodes:\n"
                    "  - name: control-plane\n    role: control-plane\n  - name: w1\n    lables: {a: b}\n")
    code, out, err = run(capsys, "up", "-f", str(topo), "--name", "x")
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("error: nodes[1].lables: unknown field") and 'did you mean "labels"' in err


def test_manifest_with_unknown_kind_is_rejected_before_contacting_a_cluster(tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: []}\n---\n"
                        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n")
    code, _, err = run(capsys, "apply", "-f", str(manifest))
    assert code == 2 and err.count("\n") == 1
    assert 'no matches for kind "Widget" in version "example.com/v1"' in err and str(manifest) in err


def test_missing_manifest_file_and_invalid_yaml(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "apply", "-f", str(tmp_path / "nope.yaml"))
    assert code == 2 and "does not exist" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: a\n")
    code, _, err = run(capsys, "apply", "-f", str(broken))
    assert code == 2 and "invalid YAML at line" in err and err.count("\n") == 1


def test_unknown_resource_type_and_cluster(capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NETK8S_STATE_ROOT", str(tmp_path))
    code, _, err = run(capsys, "get", "widgets")
    assert code == 2 and 'the server doesn\'t have a resource type "widgets"' in err
    code, _, err = run(capsys, "get", "pods")
    assert code == 2 and "no netk8s cluster is running" in err
    code, _, err = run(capsys, "--cluster", "ghost", "get", "pods")
    assert code == 2 and 'cluster "ghost" not found' in err


def test_usage_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["get"])
    assert exc.value.code == 2
    code, _, err = run(capsys, "get", "pods", "--", "extra")
    assert code == 2 and "unexpected arguments after --" in err


def test_split_command_keeps_everything_after_double_dash() -> None:
    assert split_command(["exec", "p", "--", "sh", "-c", "a -- b"]) == (["exec", "p"], ["sh", "-c", "a -- b"])
