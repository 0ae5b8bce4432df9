"""Settings: embedded defaults, YAML file, AINODE_* overrides, messages an administrator can act on."""

from importlib.resources import files
from pathlib import Path

import pytest

from node.errors import ConfigError
from node.settings import DEFAULT_CONFIG_FILE, Settings, load_settings


def test_embedded_defaults_run_without_any_file(tmp_path: Path) -> None:
    settings = load_settings(DEFAULT_CONFIG_FILE, environ={})
    assert settings.ae_title == "AINODE"
    assert settings.port == 11112
    assert settings.quiet_seconds("CR") == 0.5
    assert settings.quiet_seconds("ct") == 10
    assert settings.db_url().startswith("sqlite:///")
    # The shipped file documents the defaults: it must not change any of them.
    assert settings == Settings()


def test_environment_overrides_nested_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("port: 104\ndelivery: {max_attempts: 3}\n")
    settings = load_settings(
        cfg,
        environ={
            "AINODE_PORT": "11113",
            "AINODE_DELIVERY__BACKOFF_INITIAL": "0.5",
            "AINODE_ALLOWED_PEERS": "[{ae_title: PACS, host: 10.0.0.5}]",
            "AINODE_UID_ROOT": "1.2.3",
        },
    )
    assert settings.port == 11113
    assert settings.delivery.max_attempts == 3
    assert settings.delivery.backoff_initial == 0.5
    assert settings.allowed_peers[0].ae_title == "PACS" and settings.allowed_peers[0].host == "10.0.0.5"
    assert settings.uid_root == "1.2.3"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("port: 70000", "port: Input should be less than or equal to 65535 (got 70000). Example: port: 11112"),
        ("ae_title: MUCH_TOO_LONG_AE_TITLE", "ae_title: String should have at most 16 characters"),
        ("uid_root: 1.02.abc", "uid_root: Value error, must be digits separated by dots"),
        ("prot: 104", "prot: unknown key"),
        ("default_destinations: [nowhere]", "default_destinations names ['nowhere']"),
        ("destinations: {x: {type: ftp, url: x}}", "destinations.x"),
        ("quiet_period: {CR: 1}", "needs a 'default' entry"),
    ],
)
def test_invalid_settings_name_the_key_and_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, environ={})
    assert expected in str(info.value)
    assert str(cfg) in str(info.value)


def test_not_yaml_and_missing_file_are_clear(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("port: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(cfg, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.yaml", environ={})


def test_dicomweb_secrets_come_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret-token\n")
    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        "destinations:\n"
        f"  web: {{type: dicomweb, url: 'https://pacs.example.org/dicom-web', auth: bearer, token_file: '{secret}'}}\n"
        "  basic: {type: dicomweb, url: 'http://127.0.0.1:8042/dicom-web', auth: basic, username: u,"
        " password_env: PACS_PW}\n"
        "default_destinations: [web]\n"
    )
    settings = load_settings(cfg, environ={})
    assert settings.destinations["web"].secret() == "s3cret-token"
    monkeypatch.delenv("PACS_PW", raising=False)
    with pytest.raises(ConfigError, match="PACS_PW is not set"):
        settings.destinations["basic"].secret()
    monkeypatch.setenv("PACS_PW", "pw")
    assert settings.destinations["basic"].secret() == "pw"


def test_messages_give_the_key_pydantic_s_wording_and_hide_unknown_values(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("port: 70000\nprot: {password: s3cret}\nuid_root: 1.02.x\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, environ={})
    assert str(info.value) == (
        f"Invalid configuration ({cfg}, environment AINODE_*):\n"
        "  - port: Input should be less than or equal to 65535 (got 70000). Example: port: 11112\n"
        "  - uid_root: Value error, must be digits separated by dots, no leading zeros, at most 53 characters "
        "(so that generated UIDs fit in 64) (got '1.02.x'). Example: uid_root: 1.2.826.0.1.3680043.8.498.1\n"
        "  - prot: unknown key (check the spelling; see config/node.yaml for every key)"
    )
    cfg.write_text("default_destinations: [nowhere]\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, environ={})
    assert str(info.value).endswith(
        "\n  - (top level): Value error, default_destinations names ['nowhere'] but destinations defines only ['pacs']"
    )


def test_shipped_files_are_package_data_found_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # importlib.resources finds the packages config and weights: in the wheel's site-packages once installed, in
    # the repository in a checkout; the folder a command runs from does not matter.
    monkeypatch.chdir(tmp_path)
    config = Path(str(files("config"))).resolve()
    assert config / "node.yaml" == DEFAULT_CONFIG_FILE
    settings = load_settings(environ={})
    assert settings.routing_file == config / "routing.yaml" and settings.routing_file.is_file()
    assert settings.models_file == config / "models.yaml" and settings.models_file.is_file()
    assert settings.models_dir == Path(str(files("weights"))).resolve()
    assert (settings.models_dir / "cxr-view-filter" / "model.json").is_file()
    # The data stays out of the installation: 'var' in the folder the node runs from (data_dir: var).
    assert settings.data_dir == tmp_path.resolve() / "var"
