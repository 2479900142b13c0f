"""Rules that span keys of an entry, refused when the mapping file loads (with their line)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.mapping.loader import load_file

AWS = "region: eu-west-1, access_key_id: AKID, secret_access_key: '${AWS_SECRET}'"

CASES = [
    (
        "aws_sqs",
        "{" + AWS + ", queue_url: 'https://sqs.eu-west-1.amazonaws.com/1/q.fifo'}",
        "{}",
        "settings.message_group_id",
        "a FIFO target needs",
    ),
    (
        "aws_sns",
        "{" + AWS + ", topic_arn: 'arn:aws:sns:eu-west-1:1:t'}",
        "{message_group_id: nope}",
        "settings.message_group_id",
        "names 'nope', not a mapped field",
    ),
    (
        "aws_sqs",
        "{" + AWS + ", queue_url: 'https://sqs.eu-west-1.amazonaws.com/1/q'}",
        "{message_attributes: [email, ghost]}",
        "settings.message_attributes",
        "'ghost' is not a mapped field",
    ),
    (
        "aws_kinesis",
        "{" + AWS + ", stream_name: s}",
        "{partition_key: ghost}",
        "settings.partition_key",
        "names 'ghost', which is not a mapped field",
    ),
    (
        "aws_eventbridge",
        "{" + AWS + "}",
        "{detail_type: signup}",
        "settings.source",
        "set source or source_field",
    ),
    (
        "aws_s3",
        "{" + AWS + ", bucket: b}",
        "{key: 'x/{year}/{day}.ndjson'}",
        "settings.key",
        "must contain {batch_id}",
    ),
    (
        "aws_s3",
        "{" + AWS + ", bucket: b}",
        "{key: 'x/{yr}/{batch_id}'}",
        "settings.key",
        "unknown placeholder {yr}",
    ),
    (
        "http",
        "{url: 'https://x.example/{ghost}', auth: {type: bearer, token: '${AWS_SECRET}'}}",
        "{}",
        "connection.url",
        "placeholder {ghost} is not a mapped field",
    ),
    (
        "http",
        "{url: 'https://x.example/', auth: {type: oauth2_client_credentials, client_id: c}}",
        "{}",
        "connection.auth.token_url",
        "required for auth type oauth2_client_credentials",
    ),
]


@pytest.mark.parametrize(("type_", "connection", "settings", "path", "message"), CASES)
def test_cross_key_rules_are_refused_at_load_with_their_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, type_, connection, settings, path, message
) -> None:
    monkeypatch.setenv("AWS_SECRET", "s3cr3t")
    text = textwrap.dedent(
        f"""\
        group_key: shop
        integrations:
          - name: target
            type: {type_}
            connection: {connection}
            settings: {settings}
            fields:
              email: epost
        """
    )
    (tmp_path / "shop.yaml").write_text(text)
    mapping, problems = load_file(tmp_path / "shop.yaml")
    assert mapping is None
    found = [p for p in problems if p.path == f"integrations[0].{path}"]
    assert found, problems
    assert message in found[0].message
    assert found[0].line in (5, 6)  # the connection or settings line


def test_an_entry_that_keeps_the_rules_loads(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET", "s3cr3t")
    (tmp_path / "shop.yaml").write_text(
        textwrap.dedent(
            f"""\
            group_key: shop
            integrations:
              - name: q
                type: aws_sqs
                connection: {{{AWS}, queue_url: 'https://sqs.eu-west-1.amazonaws.com/1/q.fifo'}}
                settings: {{message_group_id: email, message_attributes: [email]}}
                fields: {{email: epost}}
              - name: hook
                type: http
                connection: {{url: 'https://x.example/${{AWS_SECRET}}/{{email}}'}}
                fields: {{email: epost}}
            """
        )
    )
    mapping, problems = load_file(tmp_path / "shop.yaml")
    assert problems == []
    assert mapping is not None
