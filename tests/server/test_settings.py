"""The one settings table: the flags, the variables, ``--help`` and docs/operations.md all come from it."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from instahide_server.__main__ import build_parser
from instahide_server.config import ServerConfig
from instahide_server.settings import BY_NAME, SETTINGS, markdown_table

from instahide_ops.audits.reconstruction import AttackSettings

OPERATIONS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_the_operations_doc_shows_the_table_as_it_is():
    text = OPERATIONS.read_text()
    begin, end = text.index("<!-- settings:begin"), text.index("<!-- settings:end -->")
    shown = text[text.index("\n", begin) + 1:end]
    assert shown == markdown_table(), "docs/operations.md's settings drifted from the table: run `make docs`"


def test_help_lists_every_flag_with_its_variable_and_default():
    out = subprocess.run([sys.executable, "-m", "instahide_server", "--help"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    flat = " ".join(out.split())
    for setting in SETTINGS:
        assert setting.flag in out and setting.env in flat, setting.name
    assert "(default: 1024; INSTAHIDE_AUDIT_POOL_MEMORY_MIB)" in flat


def test_every_setting_has_one_flag_one_variable_and_one_place_in_the_config():
    parser = build_parser()
    flags = {option for action in parser._actions for option in action.option_strings} - {"-h", "--help"}
    assert flags == {setting.flag for setting in SETTINGS}
    assert len({s.env for s in SETTINGS}) == len(SETTINGS) == len({(s.section, s.attr) for s in SETTINGS})
    config = ServerConfig.from_args_and_env(parser.parse_args([]), {})
    for setting in SETTINGS:
        section = config if setting.section == "server" else getattr(config, setting.section)
        if setting.name not in ("state_dir",):  # resolved at start to the per-user state folder
            assert getattr(section, setting.attr) == setting.default, setting.name


def test_the_audit_defaults_are_the_librarys():
    # Written out in the table so that reading the settings imports no torch; they must say what the attacks do.
    library = AttackSettings()
    assert BY_NAME["audit_pool_memory_mib"].default << 20 == library.working_bytes
    assert BY_NAME["audit_refine_sets"].default == library.refine_sets
    assert BY_NAME["audit_refine_steps"].default == library.refine_steps


def test_reading_the_settings_imports_no_torch():
    script = ("import sys; import instahide_server.__main__ as m; m.build_parser(); "
              "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
