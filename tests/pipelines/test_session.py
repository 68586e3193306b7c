"""pipelines.session: the JVM a bigtrain command starts logs warnings only, unless the user chose a log4j file; a
session carries bigtrain's SQL settings; a constant map is one literal of the optimised query."""
from __future__ import annotations

import pytest

from pipelines.session import LOG4J_CONFIG, SESSION_SQL_CONF, constant_map, is_connect, quiet_jvm_logging


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


@pytest.mark.spark
def test_a_constant_map_looks_keys_up_and_is_folded_into_one_literal(spark):
    from pyspark.sql import functions as F

    numbers = constant_map({3: 30, 1: 10, 2**40: 7}, "bigint", "bigint")
    names = constant_map({"b, \"quoted\"": "x", "é": "y"}, "string", "string")
    empty = constant_map({}, "string", "int")
    df = spark.createDataFrame([(1, "é"), (2**40, 'b, "quoted"'), (5, "none")], "k long, s string")
    got = df.select(numbers[F.col("k")].alias("n"), names[F.col("s")].alias("m"), empty[F.col("s")].alias("e"))
    assert [tuple(r) for r in got.collect()] == [(10, "y", None), (7, "x", None), (None, None, None)]
    if not is_connect(spark):  # the JSON is parsed once, on the driver, not per row
        plan = got._jdf.queryExecution().optimizedPlan().toString()
        assert "from_json" not in plan and "map(keys: [1,3,1099511627776], values: [10,30,7])" in plan, plan
