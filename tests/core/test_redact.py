"""Secrets in configs never reach what bigtrain stores, logs or prints."""
import pytest

from core.config import from_dict, parse_overrides
from core.errors import ConfigError
from core.redact import REDACTED, redact, redact_argv, sensitive

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize("name", [
    "spark.hadoop.fs.s3a.secret.key", "spark.hadoop.fs.s3a.access.key", "fs.s3a.session.token", "password",
    "spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net", "spark.ssl.keyStorePassword", "hf_token",
    "fs.gs.auth.service.account.private.key.id", "spark.authenticate.secret", "db_passwd", "apiKey"])
def test_names_of_secrets_are_sensitive(name):
    assert sensitive(name)


@pytest.mark.parametrize("name", [
    "split_key", "tokens_field", "tokenizer", "token_dtype", "max_length", "spark.executor.memory", "key",
    "fs.s3a.aws.credentials.provider", "text_field", "label_field"])
def test_ordinary_config_keys_are_not(name):
    assert not sensitive(name)


def test_redact_hides_secret_values_at_any_depth_and_keeps_the_rest():
    config = {"lr": 0.1, "splits": {"train": 0.8},
              "spark_conf": {"spark.hadoop.fs.s3a.secret.key": SECRET, "spark.executor.memory": "2g"},
              "output": f"s3a://AKIA:{SECRET}@bucket/x", "nested": {"secret": {"key": SECRET}}}
    out = redact(config)
    assert SECRET not in repr(out)
    assert out["spark_conf"] == {"spark.hadoop.fs.s3a.secret.key": REDACTED, "spark.executor.memory": "2g"}
    assert out["output"] == f"s3a://AKIA:{REDACTED}@bucket/x"
    assert out["nested"] == {"secret": REDACTED} and out["lr"] == 0.1 and out["splits"] == {"train": 0.8}
    assert config["spark_conf"]["spark.hadoop.fs.s3a.secret.key"] == SECRET  # the original is untouched


def test_redact_argv_hides_set_conf_and_flag_values():
    argv = ["bigtrain", "--set", f"x.spark_conf.fs.s3a.secret.key={SECRET}", f"--conf=spark.x.password={SECRET}",
            "--db-password", SECRET, "--epochs", "2"]
    out = redact_argv(argv)
    assert SECRET not in " ".join(out)
    assert out[2] == f"x.spark_conf.fs.s3a.secret.key={REDACTED}" and out[-2:] == ["--epochs", "2"]


def test_a_bad_set_never_echoes_a_secret():
    with pytest.raises(ConfigError) as err:
        parse_overrides([f"x.secret.key={SECRET}", f"x.secret.key.y={SECRET}"])
    assert SECRET not in str(err.value) and "x.secret.key" in str(err.value)


def test_a_wrongly_typed_secret_is_named_not_shown():
    from dataclasses import dataclass, field

    @dataclass
    class Section:
        spark_conf: dict[str, str] = field(default_factory=dict)
        password: int = 0

    with pytest.raises(ConfigError) as err:
        from_dict(Section, {"password": SECRET}, prefix="job")
    assert "job.password" in str(err.value) and SECRET not in str(err.value)
    with pytest.raises(ConfigError) as err:
        from_dict(Section, {"spark_conf": {"fs.s3a.secret.key": [SECRET]}}, prefix="job")
    assert "job.spark_conf.fs.s3a.secret.key" in str(err.value) and SECRET not in str(err.value)


def test_spark_conf_keys_set_with_dots_arrive_as_spark_keys():
    from dataclasses import dataclass, field

    @dataclass
    class Section:
        spark_conf: dict[str, str] = field(default_factory=dict)

    overrides = parse_overrides(["job.spark_conf.spark.hadoop.fs.s3a.secret.key=abc",
                                 "job.spark_conf.spark.executor.memory=2g"])
    section = from_dict(Section, overrides["job"], prefix="job")
    assert section.spark_conf == {"spark.hadoop.fs.s3a.secret.key": "abc", "spark.executor.memory": "2g"}


def test_secrets_in_option_strings_connection_strings_sas_and_slashed_url_passwords_are_hidden():
    from core.redact import redact, redact_text

    assert redact_text("spark.driver.extraJavaOptions=-Da=1 -Dfs.s3a.secret.key=S3CRET -Db=2") == (
        "spark.driver.extraJavaOptions=-Da=1 -Dfs.s3a.secret.key=<redacted> -Db=2")
    conn = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=AbC+/d==;EndpointSuffix=core.windows.net"
    assert redact_text(conn) == conn.replace("AbC+/d==", "<redacted>")
    assert redact_text("https://acct.blob.core.windows.net/c?sv=2024&sig=XyZ%2F&se=1") == (
        "https://acct.blob.core.windows.net/c?sv=2024&sig=<redacted>&se=1")
    assert redact_text("s3a://user:pa/ss@bucket/key") == "s3a://user:<redacted>@bucket/key"
    stored = redact({"spark_conf": {"spark.hadoop.fs.azure.sas.box.acct.blob.core.windows.net": "sv=1&sig=abc",
                                    "spark.hadoop.fs.azure.sas.token.provider.type": "org.example.Provider"}})
    assert stored["spark_conf"] == {"spark.hadoop.fs.azure.sas.box.acct.blob.core.windows.net": "<redacted>",
                                    "spark.hadoop.fs.azure.sas.token.provider.type": "org.example.Provider"}


def test_a_set_value_that_looks_like_yaml_syntax_is_taken_as_text_not_echoed_in_an_error():
    from core.config import parse_overrides

    for value in ("*s3cret", "!s3cret", "%s3cret", "@s3cret", "`s3cret", "[s3cret", "{s3cret"):
        assert parse_overrides([f"preprocess_images.spark_conf.fs.s3a.secret.key={value}"]) == {
            "preprocess_images": {"spark_conf": {"fs": {"s3a": {"secret": {"key": value}}}}}}
    assert parse_overrides(["train.lr=0.05", "train.model_config={a: [1, 2]}"]) == {
        "train": {"lr": 0.05, "model_config": {"a": [1, 2]}}}
