"""The JVM's file-name encoding: which locales name files in UTF-8, what is set for a JVM about to start, and the
message for one that started in another."""
from __future__ import annotations

from core.locales import effective_ctype, file_name_problem, jvm_locale_changes


def test_lc_all_wins_then_lc_ctype_then_lang_and_nothing_is_c():
    assert effective_ctype({"LC_ALL": "C", "LANG": "en_US.UTF-8"}) == "C"
    assert effective_ctype({"LC_CTYPE": "de_DE.utf8", "LANG": "C"}) == "de_DE.utf8"
    assert effective_ctype({"LANG": "fr_FR.UTF-8@euro"}) == "fr_FR.UTF-8@euro"
    assert effective_ctype({}) == "C"


def test_a_jvm_about_to_start_gets_utf8_only_where_its_locale_is_not():
    for utf8 in ({"LANG": "en_US.UTF-8"}, {"LC_ALL": "C.utf8"}, {"LC_CTYPE": "fr_FR.UTF-8@euro"}):
        assert jvm_locale_changes(utf8) == {}
    for other in ({}, {"LC_ALL": "C"}, {"LANG": "POSIX"}, {"LANG": "en_US.ISO-8859-1"},
                  {"LANG": "en_US.UTF-8", "LC_ALL": "C"}):
        assert jvm_locale_changes(other) == {"LC_ALL": "C.UTF-8"}


def test_a_running_jvm_in_ascii_is_named_with_what_to_do():
    assert file_name_problem("UTF-8", {}) is None and file_name_problem(None, {}) is None
    problem = file_name_problem("ANSI_X3.4-1968", {"LC_ALL": "C"})
    assert "ANSI_X3.4-1968" in problem and "'C'" in problem and "LC_ALL=C.UTF-8 spark-submit" in problem
