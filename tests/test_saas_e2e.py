"""End to end through ``gateway serve``: one signed record with epost, namn and some_tags
reaches each SaaS vendor's fake, mapped to the vendor's own field names with its Swedish
characters intact, exactly once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from requests_aws4auth import AWS4Auth

from tests.support import vendor_fakes
from tests.support.gateway_proc import GatewayProcess
from tests.support.receiver import Receiver
from tests.support.vendor_fakes import CLIENT_ID, CLIENT_SECRET

pytestmark = pytest.mark.e2e

SECRETS = {
    "HUBSPOT_TOKEN": "pat-eu1-e2e",
    "SEGMENT_WRITE_KEY": "wk_e2e",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/e2eSecretPath",
    "MAILCHIMP_API_KEY": "0123456789abcdef0123456789abcdef-us19",
    "BREVO_API_KEY": "xkeysib-e2e",
    "KLAVIYO_API_KEY": "pk_e2e",
    "SF_CLIENT_ID": CLIENT_ID,
    "SF_CLIENT_SECRET": CLIENT_SECRET,
}

MAPPING = """\
group_key: shop
integrations:
  - name: hubspot
    type: hubspot
    connection: {{token: "${{HUBSPOT_TOKEN}}", base_url: "{hubspot}"}}
    fields:
      email: {{path: epost, transform: [trim, lower]}}
      firstname: {{path: namn, transform: [first_word]}}
      lastname: {{path: namn, transform: [rest_words]}}
      interests: some_tags
  - name: segment
    type: segment
    action: identify
    connection: {{write_key: "${{SEGMENT_WRITE_KEY}}", base_url: "{segment}"}}
    fields:
      userId: {{path: epost, transform: [trim, lower]}}
      traits.name: namn
      traits.tags: some_tags
  - name: slack
    type: slack
    connection: {{webhook_url: "${{SLACK_WEBHOOK_URL}}", base_url: "{slack}"}}
    settings: {{text: "Ny kund: {{namn}} ({{taggar}})"}}
    fields: {{namn: namn, taggar: some_tags}}
  - name: mailchimp
    type: mailchimp
    connection: {{api_key: "${{MAILCHIMP_API_KEY}}", base_url: "{mailchimp}/3.0"}}
    settings: {{list_id: a1b2c3d4e5}}
    fields:
      email_address: {{path: epost, transform: [trim, lower]}}
      FNAME: {{path: namn, transform: [first_word]}}
      LNAME: {{path: namn, transform: [rest_words]}}
      tags: some_tags
  - name: brevo
    type: brevo
    connection: {{api_key: "${{BREVO_API_KEY}}", base_url: "{brevo}/v3"}}
    settings: {{list_ids: [7]}}
    fields:
      email: {{path: epost, transform: [trim, lower]}}
      FIRSTNAME: {{path: namn, transform: [first_word]}}
      LASTNAME: {{path: namn, transform: [rest_words]}}
      INTRESSEN: some_tags
  - name: klaviyo
    type: klaviyo
    connection: {{api_key: "${{KLAVIYO_API_KEY}}", base_url: "{klaviyo}"}}
    fields:
      email: {{path: epost, transform: [trim, lower]}}
      first_name: {{path: namn, transform: [first_word]}}
      last_name: {{path: namn, transform: [rest_words]}}
      properties.intressen: some_tags
  - name: salesforce
    type: salesforce
    connection:
      instance_url: "{salesforce}"
      client_id: "${{SF_CLIENT_ID}}"
      client_secret: "${{SF_CLIENT_SECRET}}"
    settings: {{sobject: Contact, external_id_field: Email}}
    fields:
      Email: {{path: epost, transform: [trim, lower]}}
      FirstName: {{path: namn, transform: [first_word]}}
      LastName: {{path: namn, transform: [rest_words]}}
      Intressen__c: some_tags
"""

RECORD = {
    "epost": " Åsa.Öberg@Exempel.SE ",
    "namn": "Åsa Öberg-Ström",
    "some_tags": ["kött", "fisk"],
}
EMAIL = "åsa.öberg@exempel.se"  # trimmed and lower-cased by the mappings' transforms


def _expected(name: str, body: Any) -> None:
    """What each vendor must have received for RECORD."""
    if name == "hubspot":
        [inp] = body["inputs"]
        assert inp["id"] == EMAIL
        assert inp["properties"] == {
            "email": EMAIL,
            "firstname": "Åsa",
            "lastname": "Öberg-Ström",
            "interests": "kött;fisk",
        }
    elif name == "segment":
        [msg] = body["batch"]
        assert msg["userId"] == EMAIL
        assert msg["traits"] == {"name": "Åsa Öberg-Ström", "tags": ["kött", "fisk"]}
    elif name == "slack":
        assert body == {"text": "Ny kund: Åsa Öberg-Ström (kött, fisk)"}
    elif name == "mailchimp":
        [m] = body["members"]
        assert m["email_address"] == EMAIL
        assert m["merge_fields"] == {"FNAME": "Åsa", "LNAME": "Öberg-Ström"}
        assert m["tags"] == ["kött", "fisk"]
    elif name == "brevo":
        assert body["email"] == EMAIL
        assert body["attributes"] == {
            "FIRSTNAME": "Åsa",
            "LASTNAME": "Öberg-Ström",
            "INTRESSEN": ["kött", "fisk"],
        }
        assert body["listIds"] == [7]
    elif name == "klaviyo":
        attrs = body["data"]["attributes"]
        assert attrs == {
            "email": EMAIL,
            "first_name": "Åsa",
            "last_name": "Öberg-Ström",
            "properties": {"intressen": ["kött", "fisk"]},
        }
    elif name == "salesforce":
        [rec] = body["records"]
        assert rec == {
            "attributes": {"type": "Contact"},
            "Email": EMAIL,
            "FirstName": "Åsa",
            "LastName": "Öberg-Ström",
            "Intressen__c": "kött;fisk",
        }
    else:  # a vendor added to the test without its expectation must not pass unchecked
        raise AssertionError(f"no expected body for {name}")


async def test_a_signed_record_reaches_every_saas_fake_once(tmp_path: Path) -> None:
    fakes: dict[str, Any] = {
        "hubspot": vendor_fakes.hubspot(),
        "segment": vendor_fakes.segment(),
        "slack": vendor_fakes.slack(),
        "mailchimp": vendor_fakes.mailchimp(),
        "brevo": vendor_fakes.brevo(),
        "klaviyo": vendor_fakes.klaviyo(),
        "salesforce": vendor_fakes.salesforce(),
    }
    servers = {name: await Receiver(fake).start() for name, fake in fakes.items()}
    gw = GatewayProcess(tmp_path, groups=(), GATEWAY_DELIVERY_POLL_INTERVAL="0.1", **SECRETS)
    (gw.mappings / "shop.yaml").write_text(
        MAPPING.format(**{name: s.url for name, s in servers.items()})
    )
    try:
        await asyncio.to_thread(gw.start)
        key, secret = await asyncio.to_thread(gw.create_key, "shop")
        body = json.dumps({"group_key": "shop", "data": RECORD}, ensure_ascii=False).encode()

        def post() -> requests.Response:
            return requests.post(
                gw.url + "/v1/records",
                data=body,
                auth=AWS4Auth(key, secret, "us-east-1", "execute-api"),
                headers={"Content-Type": "application/json"},
                timeout=10,
            )

        r = await asyncio.to_thread(post)
        assert r.status_code == 202, r.text

        def calls(name: str) -> list[Any]:
            return [q for q in servers[name].requests if q.path != "/services/oauth2/token"]

        for _ in range(400):  # up to 20 s
            if all(calls(n) for n in servers):
                break
            await asyncio.sleep(0.05)
        assert all(calls(n) for n in servers), {n: len(calls(n)) for n in servers}
        await asyncio.sleep(1.5)  # anything sent twice would arrive in this time
        for name in servers:
            got = calls(name)
            assert len(got) == 1, (name, [q.body for q in got])
            assert fakes[name].answered[-1] == "success", name
            _expected(name, got[0].json())
        assert servers["slack"].requests[0].path == "/services/T0/B0/e2eSecretPath"
        # No secret reaches the gateway's log.
        log = gw.output()
        for value in SECRETS.values():
            assert value not in log, value
    finally:
        if gw.proc is not None:
            await asyncio.to_thread(gw.stop)
        for s in servers.values():
            await s.stop()
