"""Settings: workspace names, option / environment / default precedence, data dir checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imprint.config import (
    DEFAULT_MODEL,
    Settings,
    default_data_dir,
    settings_from,
    validate_workspace,
)
from imprint.errors import ConfigError

ENV_NAMES = ("IMPRINT_DATA_DIR", "IMPRINT_WORKSPACE", "IMPRINT_MODEL", "IMPRINT_QDRANT_URL", "XDG_DATA_HOME")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("name", ["default", "w1", "my-work_space", "A" * 64, "0"])
def test_valid_workspace_names(name: str) -> None:
    assert validate_workspace(name) == name


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", "", ".hidden", "-dash", "_under", "a b", "A" * 65, "x\n", "é"])
def test_workspace_names_with_path_or_odd_characters_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid workspace name"):
        validate_workspace(name)


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = settings_from(data_dir=None, workspace=None, model=None, qdrant_url=None)
    assert settings == Settings(data_dir=tmp_path / ".local" / "share" / "imprint")
    assert (settings.workspace, settings.model, settings.qdrant_url) == ("default", DEFAULT_MODEL, None)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "imprint"


def test_environment_overrides_defaults_and_options_override_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPRINT_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("IMPRINT_WORKSPACE", "envws")
    monkeypatch.setenv("IMPRINT_MODEL", "env-model")
    monkeypatch.setenv("IMPRINT_QDRANT_URL", "http://env:6333")
    from_env = settings_from(data_dir=None, workspace=None, model=None, qdrant_url=None)
    assert from_env == Settings(data_dir=tmp_path / "env", workspace="envws", model="env-model", qdrant_url="http://env:6333")
    from_options = settings_from(data_dir=str(tmp_path / "opt"), workspace="optws", model="opt-model", qdrant_url="http://opt:1")
    assert from_options == Settings(data_dir=tmp_path / "opt", workspace="optws", model="opt-model", qdrant_url="http://opt:1")


def test_bad_workspace_from_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPRINT_WORKSPACE", "../../etc")
    with pytest.raises(ConfigError, match="invalid workspace name"):
        settings_from(data_dir="/tmp/x", workspace=None, model=None, qdrant_url=None)


def test_relative_data_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = settings_from(data_dir="rel/dir", workspace=None, model=None, qdrant_url=None)
    assert settings.data_dir == tmp_path / "rel" / "dir"


def test_layout_of_a_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, workspace="work")
    assert settings.collection == "imprint_work"
    assert settings.legacy_qdrant_path == tmp_path / "qdrant"
    assert settings.memories_path == tmp_path / "workspaces" / "work" / "memories"
    assert settings.facts_path == tmp_path / "workspaces" / "work" / "facts.db"
    assert settings.trust_path == tmp_path / "trusted_devices.json"
    assert settings.log_dir == tmp_path / "logs"


def test_prepare_creates_the_folders(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "new" / "data", workspace="w").prepare()
    assert settings.workspace_dir.is_dir() and settings.log_dir.is_dir()
    assert not [p for p in settings.data_dir.iterdir() if p.name.startswith(".write-test-")]


def test_prepare_refuses_a_data_dir_under_a_file(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="not writable"):
        Settings(data_dir=a_file / "data").prepare()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_prepare_refuses_a_read_only_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "ro"
    Settings(data_dir=data_dir).prepare()
    data_dir.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            Settings(data_dir=data_dir).prepare()
    finally:
        data_dir.chmod(0o700)


def test_prepare_validates_the_workspace(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid workspace name"):
        Settings(data_dir=tmp_path, workspace="../x").prepare()
    assert not (tmp_path / "x").exists()
