"""The keeper's inventory (control/keeper/inventory.py, node.py, served_models.py,
inventory_errors.py, toml_lines.py): lookup, validation messages with their lines, nodes,
models, API keys."""

from __future__ import annotations

import re
import subprocess
import sysconfig
import textwrap
from pathlib import Path

import pytest

from conftest import BIN

from rbee.control.hive.settings import KEY_FILE
from rbee.control.keeper.inventory import DEFAULT_RBEE_PATH, find_inventory, load_inventory
from rbee.control.keeper.inventory_errors import InventoryError, UnknownModel, UnknownNode
from rbee.control.keeper.served_models import ModelSpec

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-rbee-0123456789abcdef"

# DESIGN §4's example, every key set.
FULL = """\
[defaults]
hive_port = 8080
idle_timeout_s = 300

[nodes.local]            # runs on this machine, no SSH
ssh = false

[nodes.mac]
host = "mac.home.arpa"
user = "vince"
port = 2222
identity_file = "~/.ssh/id_ed25519"
known_hosts = "~/.ssh/known_hosts_rbee"
hive_port = 9090
rbee_path = "~/.local/share/rbee/venv/bin"
backend = "metal"
listen = "127.0.0.1"
api_key_env = "RBEE_MAC_KEY"
connect_timeout_s = 2.5
use_ssh_config = false
state_dir = "~/rbee-state"
"""


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $HOME and working directory; no inventory variable from the caller's shell."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("LOGNAME", "alice")  # getpass.getuser() looks here first
    monkeypatch.delenv("RBEE_INVENTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    return home


def write(text: str, name: str = "inventory.toml") -> Path:
    """Relative to the working directory, so messages read `inventory.toml:LINE: …`."""
    path = Path(name)
    path.write_text(textwrap.dedent(text))
    return path


def problems(text: str) -> list[str]:
    with pytest.raises(InventoryError) as caught:
        load_inventory(write(text))
    assert str(caught.value) == "\n".join(caught.value.problems)
    return list(caught.value.problems)


# --- lookup ---------------------------------------------------------------------------------


def test_lookup_order(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = find_inventory(None)
    assert bundled.name == "default_inventory.toml"

    user = home / ".config" / "rbee" / "inventory.toml"
    user.parent.mkdir(parents=True)
    user.write_text("")
    assert find_inventory(None) == user

    from_env = write("", "env.toml")
    monkeypatch.setenv("RBEE_INVENTORY", str(from_env))
    assert find_inventory(None) == from_env

    explicit = write("", "explicit.toml")
    assert find_inventory(explicit) == explicit
    assert find_inventory(str(explicit)) == explicit


def test_empty_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBEE_INVENTORY", "")
    assert find_inventory(None).name == "default_inventory.toml"


def test_tilde_in_explicit_path(home: Path) -> None:
    (home / "inv.toml").write_text("")
    assert find_inventory("~/inv.toml") == home / "inv.toml"


def test_missing_explicit_file_is_an_error_not_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        InventoryError,
        match=r"^nope\.toml: no such inventory file \(from "
        r"--inventory\)$",
    ):
        find_inventory("nope.toml")

    monkeypatch.setenv("RBEE_INVENTORY", "gone.toml")
    with pytest.raises(
        InventoryError,
        match=r"^gone\.toml: no such inventory file \(from "
        r"\$RBEE_INVENTORY\)$",
    ):
        find_inventory(None)

    Path("adir").mkdir()
    with pytest.raises(InventoryError, match="adir: the inventory is not a file"):
        find_inventory("adir")


def test_bundled_default_has_the_local_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RBEE_HOME", str(tmp_path / "home"))
    inventory = load_inventory(find_inventory(None))
    assert list(inventory.nodes) == ["local"]
    local = inventory.get("local")
    assert local.ssh is False and local.is_local and local.direct
    assert local.hive_url == "http://127.0.0.1:8080"
    assert local.rbee_path == sysconfig.get_path("scripts")  # this Python's rbee-hive
    assert local.state_dir == str(tmp_path / "home" / "hive")  # RBEE_HOME moves it
    assert local.api_key_env is None and local.api_key_file is None
    assert inventory.idle_timeout_s == 300
    assert inventory.models == {}


def test_a_local_node_without_a_key_gets_one_of_its_own(tmp_path: Path) -> None:
    """Other users of the machine reach 127.0.0.1 too: the local hive is keyed all the same."""
    (tmp_path / "inventory.toml").write_text(
        f'[nodes.local]\nssh = false\nstate_dir = "{tmp_path / "state"}"\n'
    )
    local = load_inventory(tmp_path / "inventory.toml").get("local")
    key = local.api_key()
    assert key and len(key) >= 32
    assert local.local_key_file == tmp_path / "state" / KEY_FILE
    assert local.local_key_file.stat().st_mode & 0o777 == 0o600
    assert local.api_key() == key  # made once, then read
    assert str(local.local_key_file) in (local.api_key_source or "")
    assert [p.name for p in (tmp_path / "state").iterdir()] == [KEY_FILE]  # no draft left


def test_bundled_copy_matches_the_repository_example() -> None:
    bundled = find_inventory(None)
    assert bundled.read_text() == (REPO / "inventory.toml").read_text()


def test_the_examples_commented_tables_are_valid() -> None:
    """Uncommented, the example's `[nodes.mac]` and `[models.gemma]` load as they read."""
    text = (REPO / "inventory.toml").read_text()
    inventory = load_inventory(write(re.sub(r"^# (?=\[|\w+ = )", "", text, flags=re.M)))
    assert list(inventory.nodes) == ["local", "mac"]
    assert inventory.models == {
        "gemma": ModelSpec("gemma", "pkg:gemma3-270m", ("local", "mac"), 4, 1)
    }


# --- valid nodes ----------------------------------------------------------------------------


def test_full_remote_node(home: Path) -> None:
    node = load_inventory(write(FULL)).get("mac")
    assert (node.name, node.host, node.user, node.port) == ("mac", "mac.home.arpa", "vince", 2222)
    assert node.ssh and not node.is_local and not node.direct
    # On this machine: expanded.
    assert node.identity_file == home / ".ssh" / "id_ed25519"
    assert node.known_hosts == home / ".ssh" / "known_hosts_rbee"
    # On the node: `~` kept for the node's shell.
    assert node.rbee_path == "~/.local/share/rbee/venv/bin"
    assert node.state_dir == "~/rbee-state"
    assert (node.hive_port, node.backend, node.listen) == (9090, "metal", "127.0.0.1")
    assert (node.connect_timeout_s, node.use_ssh_config) == (2.5, False)
    assert node.api_key_env == "RBEE_MAC_KEY" and node.api_key_file is None
    assert node.inventory_path == Path("inventory.toml")
    assert "user" in node.set_keys and "ssh" not in node.set_keys


def test_a_node_sets_its_own_idle_timeout(home: Path) -> None:
    inventory = load_inventory(
        write("""
        [defaults]
        idle_timeout_s = 600

        [nodes.pi]
        host = "192.168.1.20"
        idle_timeout_s = 30

        [nodes.mac]
        host = "192.168.1.21"
    """)
    )
    assert (inventory.get("pi").idle_timeout_s, inventory.get("mac").idle_timeout_s) == (30, 600)


def test_minimal_remote_node_gets_the_defaults(home: Path) -> None:
    inventory = load_inventory(
        write("""
        [defaults]
        hive_port = 9000
        idle_timeout_s = 60.5

        [nodes.pi]
        host = "192.168.1.20"
    """)
    )
    node = inventory.get("pi")
    assert inventory.idle_timeout_s == node.idle_timeout_s == 60.5
    assert (node.user, node.port, node.hive_port, node.backend) == ("alice", 22, 9000, "cpu")
    assert node.identity_file is None
    assert node.known_hosts == home / ".ssh" / "known_hosts"
    assert node.rbee_path == DEFAULT_RBEE_PATH == "~/.local/share/rbee/venv/bin"
    assert node.state_dir == "~/.rbee/hive"
    assert node.listen == "127.0.0.1" and node.connect_timeout_s == 10
    assert node.use_ssh_config is True
    assert node.set_keys == {"host"}  # user, port, identity left to ~/.ssh/config


def test_empty_file_has_no_nodes() -> None:
    inventory = load_inventory(write(""))
    assert inventory.nodes == {} and inventory.idle_timeout_s == 300


def test_local_node_paths_are_expanded_here(home: Path) -> None:
    node = load_inventory(
        write("""
        [nodes.box]
        ssh = false
        rbee_path = "~/venv/bin"
        state_dir = "~/hive"
        api_key_file = "~/keys/box"
    """)
    ).get("box")
    assert node.rbee_path == str(home / "venv" / "bin")
    assert node.state_dir == str(home / "hive")
    assert node.api_key_file == home / "keys" / "box"
    assert node.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("table", "url"),
    [
        ("ssh = false", "http://127.0.0.1:8080"),
        ('ssh = false\nlisten = "0.0.0.0"\napi_key_env = "K"', "http://127.0.0.1:8080"),
        ('host = "mac.lan"\nlisten = "192.168.1.5"\napi_key_env = "K"', "http://192.168.1.5:8080"),
        ('host = "mac.lan"\nlisten = "0.0.0.0"\napi_key_env = "K"', "http://mac.lan:8080"),
        (
            'host = "mac.lan"\nlisten = "fd00::5"\napi_key_env = "K"\nhive_port = 81',
            "http://[fd00::5]:81",
        ),
    ],
)
def test_hive_url_of_direct_nodes(table: str, url: str) -> None:
    node = load_inventory(write("[nodes.n]\n" + table + "\n")).get("n")
    assert node.direct and node.hive_url == url


def test_forwarded_node_has_no_direct_url() -> None:
    node = load_inventory(write(FULL)).get("mac")
    with pytest.raises(ValueError, match="reach it through SSH"):
        _ = node.hive_url


def test_the_forward_a_person_runs_uses_the_keepers_ssh_settings(home: Path) -> None:
    """`rbee workers env` prints it for a worker on a node's loopback: with what the
    inventory sets, and what ~/.ssh/config supplies left to it (use_ssh_config)."""
    full = load_inventory(write(FULL)).get("mac")
    assert full.forward_command("::1", 41234) == (
        f"ssh -N -L '41234:[::1]:41234' -p 2222 -i {home}/.ssh/id_ed25519 "
        f"-o UserKnownHostsFile={home}/.ssh/known_hosts_rbee vince@mac.home.arpa"
    )
    minimal = load_inventory(write('[nodes.pi]\nhost = "pi.lan"\n')).get("pi")
    assert minimal.forward_command("127.0.0.1", 5000) == "ssh -N -L 5000:127.0.0.1:5000 pi.lan"


@pytest.mark.parametrize("name", ["a", "mac", "gpu-box.lan", "n_1", "9", "A" * 63])
def test_valid_node_names(name: str) -> None:
    assert load_inventory(write(f'[nodes."{name}"]\nssh = false\n')).get(name).name == name


@pytest.mark.parametrize(
    "name", ["", "-x", ".hidden", "_x", "a b", "a;rm -rf", "$(id)", "a/b", "é", "A" * 64]
)
def test_invalid_node_names(name: str) -> None:
    found = problems(f'[nodes."{name}"]\nssh = false\n')
    assert len(found) == 1
    assert found[0].startswith("inventory.toml:1: node ")
    assert found[0].endswith(
        ': invalid node name: use 1–63 letters, digits, "_", "." or "-", '
        "starting with a letter or digit"
    )


# --- errors, each with its line -------------------------------------------------------------

KNOWN = (
    "ssh, host, user, port, identity_file, known_hosts, hive_port, rbee_path, backend, "
    "listen, api_key_env, api_key_file, connect_timeout_s, use_ssh_config, state_dir, "
    "idle_timeout_s"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[nodes.mac]\nhots = "m"\nhost = "m"\n',
            f'inventory.toml:2: node "mac": unknown key "hots" (known: {KNOWN})',
        ),
        (
            '[nodes.mac]\nhost = "m"\n\nport = "22a"\n',
            'inventory.toml:4: node "mac": "port" must be an integer 1–65535, got "22a"',
        ),
        (
            '[nodes.mac]\nhost = "m"\nport = 70000\n',
            'inventory.toml:3: node "mac": "port" must be an integer 1–65535, got 70000',
        ),
        (
            '[nodes.mac]\nhost = "m"\nport = 22.0\n',
            'inventory.toml:3: node "mac": "port" must be an integer 1–65535, got 22.0',
        ),
        (
            '# comment\n\n[nodes.mac]\nuser = "v"\n',
            'inventory.toml:3: node "mac": "host" is required for an SSH node',
        ),
        (
            '[nodes.mac]\nssh = "yes"\nhost = "m"\n',
            'inventory.toml:2: node "mac": "ssh" must be true or false, got "yes"',
        ),
        (
            '[nodes.mac]\nhost = "m"\nbackend = "rocm"\n',
            'inventory.toml:3: node "mac": "backend" must be one of "cpu", "cuda", "metal", '
            'got "rocm"',
        ),
        (
            '[nodes.mac]\nhost = "-oProxyCommand=x"\n',
            'inventory.toml:2: node "mac": "host" must be a host name or IP address, '
            'got "-oProxyCommand=x"',
        ),
        (
            '[nodes.mac]\nhost = "m"\nconnect_timeout_s = 0\n',
            'inventory.toml:3: node "mac": "connect_timeout_s" must be a number of seconds > 0, '
            "got 0",
        ),
        (
            '[nodes.mac]\nhost = "m"\nidentity_file = ""\n',
            'inventory.toml:3: node "mac": "identity_file" must be a file path, got ""',
        ),
        (
            '[nodes.mac]\nhost = "m"\nrbee_path = ["a"]\n',
            'inventory.toml:3: node "mac": "rbee_path" must be a directory path, got an array',
        ),
        (
            "[defaults]\nhive_port = 8080\nidle_timeout_s = -1\n",
            'inventory.toml:3: [defaults]: "idle_timeout_s" must be a number of seconds > 0, '
            "got -1",
        ),
        (
            "[defaults]\nidle = 3\n",
            'inventory.toml:2: [defaults]: unknown key "idle" (known: hive_port, idle_timeout_s)',
        ),
        ("defaults = 3\n", 'inventory.toml:1: "defaults" must be a table, got 3'),
        (
            '[node.mac]\nhost = "m"\n',
            'inventory.toml:1: unknown top-level key "node" (known: defaults, nodes, models)',
        ),
        (
            'nodes = ["mac"]\n',
            'inventory.toml:1: "nodes" must be a table of [nodes.NAME] tables, got an array',
        ),
        ('[nodes]\nmac = "m.lan"\n', 'inventory.toml:2: node "mac": must be a table, got "m.lan"'),
        (
            '[nodes]\nlocal = { ssh = false }\nmac = { host = "m", port = 0 }\n',
            'inventory.toml:3: node "mac": "port" must be an integer 1–65535, got 0',
        ),
        (
            '[nodes.local]\nssh = false\nhost = "127.0.0.1"\n',
            'inventory.toml:3: node "local": "host" applies to SSH nodes only (this node has '
            "ssh = false)",
        ),
        (
            '[nodes.mac]\nhost = "m"\napi_key_env = "K"\napi_key_file = "~/k"\n',
            'inventory.toml:4: node "mac": set "api_key_env" or "api_key_file", not both',
        ),
        (
            '[nodes.mac]\nhost = "m"\nlisten = "0.0.0.0"\n',
            'inventory.toml:3: node "mac": listen = "0.0.0.0" is reachable from the network, '
            'so the node needs an API key: set "api_key_env" or "api_key_file"',
        ),
        (
            '[nodes.mac]\nhost = "m"\n[nodes.mac.extra]\nx = 1\n',
            f'inventory.toml:3: node "mac": unknown key "extra" (known: {KNOWN})',
        ),
        (
            '[nodes.mac]\nhost = "m"\nport = \n',
            "inventory.toml:3: not valid TOML: Invalid value (column 8)",
        ),
        (
            '[nodes.mac]\nhost = "m"\n[nodes.mac]\n',
            "inventory.toml:3: not valid TOML: Cannot declare ('nodes', 'mac') twice (column 11)",
        ),
    ],
)
def test_error_names_file_line_node_and_key(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_several_problems_listed_in_file_order() -> None:
    found = problems("""\
        [defaults]
        hive_port = "8080"

        [nodes.mac]
        user = "vince"
        port = "22a"
        colour = "blue"

        [nodes.local]
        ssh = false
        port = 22
    """)
    assert found == [
        'inventory.toml:2: [defaults]: "hive_port" must be an integer 1–65535, got "8080"',
        'inventory.toml:4: node "mac": "host" is required for an SSH node',
        'inventory.toml:6: node "mac": "port" must be an integer 1–65535, got "22a"',
        f'inventory.toml:7: node "mac": unknown key "colour" (known: {KNOWN})',
        'inventory.toml:11: node "local": "port" applies to SSH nodes only (this node has '
        "ssh = false)",
    ]


def test_unreadable_and_non_utf8_files() -> None:
    with pytest.raises(InventoryError, match="^missing.toml: cannot read the inventory: "):
        load_inventory(Path("missing.toml"))
    Path("latin1.toml").write_bytes(b"# caf\xe9\n")
    with pytest.raises(InventoryError, match=r"^latin1.toml: not UTF-8 text \(byte 5\)$"):
        load_inventory(Path("latin1.toml"))


def test_unknown_node_lists_the_known_names() -> None:
    inventory = load_inventory(write(FULL))
    with pytest.raises(UnknownNode) as caught:
        inventory.get("pi")
    assert str(caught.value) == 'inventory.toml: unknown node "pi" (known: local, mac)'
    assert isinstance(caught.value, InventoryError) and isinstance(caught.value, ValueError)
    assert caught.value.known == ["local", "mac"]

    with pytest.raises(UnknownNode, match=r'unknown node "a\\nb" \(known: none\)'):
        load_inventory(write("")).get("a\nb")  # escaped, never raw on a terminal


# --- models ---------------------------------------------------------------------------------

MODELS = """\
[nodes.local]
ssh = false

[nodes.mac]
host = "mac.home.arpa"

[nodes.pi]
host = "pi.home.arpa"

[models.gemma]                 # a name clients can send as "model"
ref = "pkg:gemma3-270m"
nodes = ["pi", "local"]        # where it may run (default: every node)
slots = 4                      # per worker
max_workers_per_node = 2

[models."qwen:0.5b"]
ref = "HF:Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q4_k_m.gguf"

[models]
tiny = { ref = "https://models.example/tiny.gguf#sha256=%s" }
""" % ("AB" * 32)
ALL_NODES = ("local", "mac", "pi")


def test_models_by_name_with_their_defaults() -> None:
    inventory = load_inventory(write(MODELS))
    assert inventory.models == {
        # Nodes in inventory order, whatever the list's.
        "gemma": ModelSpec("gemma", "pkg:gemma3-270m", ("local", "pi"), 4, 2),
        # The reference in its canonical spelling; every node, one slot, one worker per node.
        "qwen:0.5b": ModelSpec(
            "qwen:0.5b",
            "hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q4_k_m.gguf",
            ALL_NODES,
            1,
            1,
        ),
        # Its checksum apart: hives and workers name the model without it; spawns carry it.
        "tiny": ModelSpec(
            "tiny", "https://models.example/tiny.gguf", ALL_NODES, 1, 1, sha256="ab" * 32
        ),
    }
    assert inventory.models["tiny"].spelled == "https://models.example/tiny.gguf#sha256=" + (
        "ab" * 32
    )
    assert inventory.model("gemma") is inventory.models["gemma"]
    assert inventory.model("qwen:0.5b") is inventory.models["qwen:0.5b"]


def test_a_model_names_the_chat_template_of_its_workers() -> None:
    inventory = load_inventory(
        write('[models.chat]\nref = "file:/m/base.gguf"\nchat_template = "chatml"\n')
    )
    assert inventory.models["chat"].chat_template == "chatml"
    # plain `rbee infer --model REF` starts its workers with the template of REF's model
    assert inventory.model("file:/m/base.gguf").chat_template == "chatml"
    assert inventory.model("file:/m/other.gguf").chat_template is None


def test_a_model_reference_is_a_model_too() -> None:
    inventory = load_inventory(write(MODELS))
    assert inventory.model("file:/models/./x.gguf") == ModelSpec(
        "file:/models/x.gguf", "file:/models/x.gguf", ALL_NODES, 1, 1
    )
    # A reference an inventory model serves gets that model, so its limits apply.
    assert inventory.model("pkg:gemma3-270m") is inventory.models["gemma"]
    assert inventory.model("https://models.example:443/tiny.gguf") is inventory.models["tiny"]
    assert load_inventory(write("")).model("pkg:gemma3-270m") == ModelSpec(
        "pkg:gemma3-270m", "pkg:gemma3-270m", (), 1, 1
    )


FORMS = (
    "pkg:NAME, file:/abs/path.gguf, https://host/path/name.gguf[#sha256=HEX], "
    "hf:ORG/REPO[:FILE.gguf]"
)


def test_unknown_model_lists_the_names_and_says_a_reference_works_too() -> None:
    inventory = load_inventory(write(MODELS))
    with pytest.raises(UnknownModel) as caught:
        inventory.model("gema")
    assert str(caught.value) == (
        'unknown model "gema" (known: gemma, qwen:0.5b, tiny); '
        f"a model reference works too: {FORMS}"
    )
    assert isinstance(caught.value, InventoryError)
    assert (caught.value.name, caught.value.known) == ("gema", ["gemma", "qwen:0.5b", "tiny"])

    # Meant as a reference: the grammar says what is wrong with it.
    with pytest.raises(UnknownModel) as caught:
        load_inventory(write("")).model("pkg:gemma")
    assert str(caught.value) == (
        'unknown model "pkg:gemma" (known: none); as a model reference: unknown bundled model '
        f"(known: pkg:gemma3-270m); accepted forms: {FORMS}"
    )
    with pytest.raises(UnknownModel, match=r'^unknown model "a\\nb" '):
        inventory.model("a\nb")  # escaped, never raw on a terminal


@pytest.mark.parametrize("name", ["a", "gemma", "qwen2.5:0.5b-q4_K_M", "9", "A" * 128])
def test_valid_model_names(name: str) -> None:
    inventory = load_inventory(write(f'[models."{name}"]\nref = "pkg:gemma3-270m"\n'))
    assert inventory.model(name).name == name


@pytest.mark.parametrize(
    "name", ["", "-x", ".x", ":x", "a b", "a/b", "a?b", "a%20b", "é", "A" * 129]
)
def test_invalid_model_names(name: str) -> None:
    found = problems(f'[models."{name}"]\nref = "pkg:gemma3-270m"\n')
    assert len(found) == 1
    assert found[0].startswith("inventory.toml:1: model ")
    assert found[0].endswith(
        ': invalid model name: use 1–128 letters, digits, "_", ".", ":" or "-", '
        "starting with a letter or digit"
    )


MODEL_KEYS = "ref, nodes, slots, max_workers_per_node, chat_template"
NODES = '[nodes.local]\nssh = false\n[nodes.mac]\nhost = "m"\n'  # lines 1–4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[models.gemma]\nref = "pkg:gemma3-270m"\nslot = 4\n',
            f'inventory.toml:3: model "gemma": unknown key "slot" (known: {MODEL_KEYS})',
        ),
        (
            "[models.gemma]\nslots = 4\n",
            'inventory.toml:1: model "gemma": "ref" is required (a model reference such as '
            '"pkg:gemma3-270m")',
        ),
        (
            '[models.gemma]\nref = "gemma3-270m"\n',
            'inventory.toml:2: model "gemma": "ref" is not a model reference: no provider '
            f"prefix; accepted forms: {FORMS}",
        ),
        (
            '[models.gemma]\nref = "file:models/x.gguf"\n',
            'inventory.toml:2: model "gemma": "ref" is not a model reference: a file: reference '
            f"needs an absolute path (file:/dir/x.gguf); accepted forms: {FORMS}",
        ),
        (
            "[models.gemma]\nref = 3\n",
            'inventory.toml:2: model "gemma": "ref" must be a model reference such as '
            '"pkg:gemma3-270m", got 3',
        ),
        (
            NODES + '[models.gemma]\nref = "pkg:gemma3-270m"\nnodes = "local"\n',
            'inventory.toml:7: model "gemma": "nodes" must be a non-empty list of node names, '
            'got "local"',
        ),
        (
            NODES + '[models.gemma]\nref = "pkg:gemma3-270m"\nnodes = ["local", 2]\n',
            'inventory.toml:7: model "gemma": "nodes" must be a non-empty list of node names, '
            "got 2 in the array",
        ),
        (
            NODES + '[models.gemma]\nref = "pkg:gemma3-270m"\nnodes = []\n',
            'inventory.toml:7: model "gemma": "nodes" must be a non-empty list of node names, '
            "got an empty array",
        ),
        (
            NODES + '[models.gemma]\nref = "pkg:gemma3-270m"\nnodes = ["local", "pi"]\n',
            'inventory.toml:7: model "gemma": unknown node "pi" in "nodes" (known: local, mac)',
        ),
        (
            '[models.gemma]\nref = "pkg:gemma3-270m"\nnodes = ["local"]\n',
            'inventory.toml:3: model "gemma": unknown node "local" in "nodes" (known: none)',
        ),
        (
            '[models.gemma]\nref = "pkg:gemma3-270m"\nslots = 0\n',
            'inventory.toml:3: model "gemma": "slots" must be an integer 1–64, got 0',
        ),
        (
            '[models.gemma]\nref = "pkg:gemma3-270m"\nslots = 65\n',
            'inventory.toml:3: model "gemma": "slots" must be an integer 1–64, got 65',
        ),
        (
            '[models.gemma]\nref = "pkg:gemma3-270m"\nslots = "4"\n',
            'inventory.toml:3: model "gemma": "slots" must be an integer 1–64, got "4"',
        ),
        (
            '[models.gemma]\nref = "pkg:gemma3-270m"\nmax_workers_per_node = 17\n',
            'inventory.toml:3: model "gemma": "max_workers_per_node" must be an integer 1–16, '
            "got 17",
        ),
        (
            '[models.gemma]\nref = "pkg:gemma3-270m"\nmax_workers_per_node = 1.5\n',
            'inventory.toml:3: model "gemma": "max_workers_per_node" must be an integer 1–16, '
            "got 1.5",
        ),
        (
            '[models.gemma]\nref = "pkg:gemma3-270m"\nchat_template = "vicuna"\n',
            'inventory.toml:3: model "gemma": "chat_template" must be one of "chatml", '
            '"gemma", "llama3", got "vicuna"',
        ),
        (
            '[models.gemma]\nref = "pkg:gemma3-270m"\n[models.chat]\nref = "pkg:gemma3-270m"\n'
            'chat_template = "chatml"\n',
            'inventory.toml:5: model "chat": serves the same file as model "gemma" with another '
            "chat_template (chatml and none): workers of one file serve both, so give them the "
            "same one",
        ),
        (
            'models = ["pkg:gemma3-270m"]\n',
            'inventory.toml:1: "models" must be a table of [models.NAME] tables, got an array',
        ),
        (
            '[models]\ngemma = "pkg:gemma3-270m"\n',
            'inventory.toml:2: model "gemma": must be a table, got "pkg:gemma3-270m"',
        ),
    ],
)
def test_model_errors_name_file_line_model_and_key(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_model_problems_are_listed_with_the_nodes_ones() -> None:
    """A node's own mistake is not reported again by the models that name it."""
    found = problems("""\
        [nodes.mac]
        user = "vince"

        [models.gemma]
        ref = "pkg:gemma3-270m"
        nodes = ["mac", "pi"]
        slots = 0

        [models.tiny]
        ref = "pkg:tiny"
        nodes = ["mac", "pi"]
    """)
    assert found == [
        'inventory.toml:1: node "mac": "host" is required for an SSH node',
        'inventory.toml:7: model "gemma": "slots" must be an integer 1–64, got 0',
        'inventory.toml:10: model "tiny": "ref" is not a model reference: unknown bundled '
        f"model (known: pkg:gemma3-270m); accepted forms: {FORMS}",
        'inventory.toml:11: model "tiny": unknown node "pi" in "nodes" (known: mac)',
    ]


# --- API keys -------------------------------------------------------------------------------


def key_node(key_line: str) -> str:
    return f'[nodes.mac]\nhost = "m"\n{key_line}\n'


def test_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    node = load_inventory(write(key_node('api_key_env = "RBEE_MAC_KEY"'))).get("mac")
    monkeypatch.setenv("RBEE_MAC_KEY", f" {SECRET}\n")
    assert node.api_key() == SECRET
    assert node.api_key_source == "$RBEE_MAC_KEY (api_key_env in inventory.toml)"

    monkeypatch.delenv("RBEE_MAC_KEY")
    with pytest.raises(InventoryError) as caught:
        node.api_key()
    assert str(caught.value) == (
        'node "mac": environment variable RBEE_MAC_KEY is not set or '
        "empty (api_key_env in inventory.toml)"
    )


def test_api_key_from_a_private_file(home: Path) -> None:
    key_file = home / "mac.key"
    key_file.write_text(SECRET + "\n")
    key_file.chmod(0o600)
    node = load_inventory(write(key_node('api_key_file = "~/mac.key"'))).get("mac")
    assert node.api_key_file == key_file
    assert node.api_key() == SECRET
    assert node.api_key_source == f"{key_file} (api_key_file in inventory.toml)"
    key_file.chmod(0o400)
    assert node.api_key() == SECRET


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_key_file_readable_by_others_is_refused(home: Path, mode: int) -> None:
    key_file = home / "mac.key"
    key_file.write_text(SECRET)
    key_file.chmod(mode)
    node = load_inventory(write(key_node('api_key_file = "~/mac.key"'))).get("mac")
    with pytest.raises(InventoryError) as caught:
        node.api_key()
    assert str(caught.value) == (
        f'node "mac": API key file {key_file} has mode {mode:04o}; '
        f"it must be private to its owner: chmod 600 {key_file}"
    )


def test_missing_or_empty_key_file(home: Path) -> None:
    node = load_inventory(write(key_node('api_key_file = "~/mac.key"'))).get("mac")
    with pytest.raises(InventoryError, match="cannot read API key file .*No such file"):
        node.api_key()
    (home / "mac.key").touch(mode=0o600)
    with pytest.raises(InventoryError, match="mac.key is empty$"):
        node.api_key()


def test_no_key_configured_on_a_loopback_node() -> None:
    node = load_inventory(write(key_node(""))).get("mac")
    assert node.api_key() is None and node.api_key_source is None


def test_key_never_in_messages(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    messages: list[str] = []

    # A key pasted where a variable name or path belongs.
    messages += problems(key_node(f'api_key_env = "{SECRET} "'))
    messages += problems(key_node(f'api_key_file = "\\t{SECRET}"'))
    messages += problems(key_node(f'api_key = "{SECRET}"'))

    node = load_inventory(write(key_node('api_key_env = "RBEE_MAC_KEY"'))).get("mac")
    monkeypatch.setenv("RBEE_MAC_KEY", f"{SECRET} {SECRET}")
    with pytest.raises(InventoryError) as caught:
        node.api_key()
    messages.append(str(caught.value))

    key_file = home / "mac.key"
    key_file.write_text(SECRET)
    key_file.chmod(0o644)
    node = load_inventory(write(key_node('api_key_file = "~/mac.key"'))).get("mac")
    with pytest.raises(InventoryError) as caught:
        node.api_key()
    messages.append(str(caught.value))

    assert messages[0] == (
        'inventory.toml:3: node "mac": "api_key_env" must be an environment '
        "variable name (value not shown)"
    )
    assert "the API key in $RBEE_MAC_KEY contains spaces" in messages[3]
    assert len(messages) == 5
    assert not [m for m in messages if SECRET in m or "sk-rbee" in m]


def test_the_commands_refuse_a_bad_inventory_with_exit_2() -> None:
    """As docs/keeper.md says: inventory mistakes are refused before any network call, with
    exit 2 (the command line's own mistakes' code), naming file, line and key."""
    path = write("[nodes.local]\nssh = false\nbogus = 1\n")
    done = subprocess.run(
        [str(BIN / "rbee"), "--inventory", str(path), "nodes"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.startswith('Error: inventory.toml:3: node "local": unknown key "bogus"')
