"""pipelines.session: the JVM a bigtrain command starts logs warnings only, unless the user chose a log4j file; a
session carries bigtrain's SQL settings."""
from __future__ import annotations

import pytest

from pipelines.session import LOG4J_CONFIG, SESSION_SQL_CONF, quiet_jvm_logging


def test_a_jvm_started_here_gets_the_quiet_log4j_file_and_a_users_own_is_kept():
    environ = {"SPARK_SUBMIT_OPTS": "-Xss4m"}
    quiet_jvm_logging(environ)
    assert environ["SPARK_SUBMIT_OPTS"] == f"-Xss4m -Dlog4j2.configurationFile=file:{LOG4J_CONFIG}"
    assert LOG4J_CONFIG.is_file()
    own = {"SPARK_SUBMIT_OPTS": "-Dlog4j2.configurationFile=file:/etc/mine.properties"}
    quiet_jvm_logging(own)
    assert own == {"SPARK_SUBMIT_OPTS": "-Dlog4j2.configurationFile=file:/etc/mine.properties"}
    empty: dict[str, str] = {}
    quiet_jvm_logging(empty)
    assert empty == {"SPARK_SUBMIT_OPTS": f"-Dlog4j2.configurationFile=file:{LOG4J_CONFIG}"}


@pytest.mark.spark
def test_a_session_carries_bigtrain_sql_settings(spark):
    # the copies search's marks are looked up through a hash from 16 keys (a scan of the keys below: duplicates.apply)
    for key, value in SESSION_SQL_CONF.items():
        assert spark.conf.get(key) == value, key
