"""Local fakes of the SaaS vendors' APIs: answer functions for :class:`Receiver` that give
the vendor's real answer shapes (success, partial failure, rate limit, expired or wrong
credentials, server error), as the vendors document them.

Each fake has a ``plan``: the shapes of the next answers, one per request, then ``default``.
Records whose id contains ``invalid`` are the ones a partial failure refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.support.receiver import Answer, Received

JSON = {"Content-Type": "application/json;charset=utf-8"}


@dataclass
class Fake:
    """A scripted vendor: ``plan`` is consumed one shape a request, then ``default``."""

    shapes: dict[str, Callable[[Received], Answer]]
    default: str = "success"
    plan: list[str] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # the shape of each answer, in order

    def __call__(self, r: Received) -> Answer:
        shape = self.plan.pop(0) if self.plan else self.default
        self.answered.append(shape)
        return self.shapes[shape](r)


def _json(status: int, doc: Any, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, {**JSON, **(headers or {})}, orjson.dumps(doc))


# -- HubSpot (CRM v3 batch upsert) ----------------------------------------------------------
# https://developers.hubspot.com/docs/api/crm/contacts (batch upsert), .../api/usage-details
# (429 body and X-HubSpot-RateLimit-* headers), .../api/error-handling (error categories).


def _hubspot_result(inp: dict[str, Any], n: int) -> dict[str, Any]:
    return {
        "id": str(1000 + n),
        "properties": {**inp["properties"], "hs_object_id": str(1000 + n)},
        "createdAt": "2026-12-06T09:00:00.000Z",
        "updatedAt": "2026-12-06T09:00:00.000Z",
        "archived": False,
        "new": True,
        "objectWriteTraceId": inp.get("objectWriteTraceId"),
    }


def _hubspot_success(r: Received) -> Answer:
    inputs = r.json()["inputs"]
    return _json(
        200,
        {
            "status": "COMPLETE",
            "results": [_hubspot_result(i, n) for n, i in enumerate(inputs)],
            "startedAt": "2026-12-06T09:00:00.000Z",
            "completedAt": "2026-12-06T09:00:00.100Z",
        },
    )


def _hubspot_partial(by: str) -> Callable[[Received], Answer]:
    def answer(r: Received) -> Answer:
        inputs = r.json()["inputs"]
        good = [i for i in inputs if "invalid" not in i["id"]]
        bad = [i for i in inputs if "invalid" in i["id"]]
        errors = []
        for i in bad:
            context = (
                {"ids": [i["id"]]}
                if by == "ids"
                else {"objectWriteTraceId": [i["objectWriteTraceId"]]}
                if by == "trace"
                else {}
            )
            errors.append(
                {
                    "status": "error",
                    "category": "VALIDATION_ERROR",
                    "message": 'Property values were not valid: [{"isValid":false,"message":'
                    f'"Email address {i["id"]} is invalid","error":"INVALID_EMAIL",'
                    '"name":"email"}]',
                    "context": context,
                }
            )
        return _json(
            207,
            {
                "status": "COMPLETE",
                "results": [_hubspot_result(i, n) for n, i in enumerate(good)],
                "numErrors": len(errors),
                "errors": errors,
                "startedAt": "2026-12-06T09:00:00.000Z",
                "completedAt": "2026-12-06T09:00:00.100Z",
            },
        )

    return answer


def hubspot(interval_ms: int = 10_000) -> Fake:
    """HubSpot's batch upsert endpoint."""
    return Fake(
        {
            "success": _hubspot_success,
            "partial": _hubspot_partial("trace"),
            "partial_by_id": _hubspot_partial("ids"),
            "partial_unattributed": _hubspot_partial("none"),
            "rate_limit": lambda r: _json(
                429,
                {
                    "status": "error",
                    "message": "You have reached your ten_secondly_rolling limit.",
                    "errorType": "RATE_LIMIT",
                    "correlationId": "c1a1e7a2-64f0-4f5e-9b8e-1f1c2d3e4f50",
                    "policyName": "TEN_SECONDLY_ROLLING",
                },
                {
                    "X-HubSpot-RateLimit-Interval-Milliseconds": str(interval_ms),
                    "X-HubSpot-RateLimit-Max": "100",
                    "X-HubSpot-RateLimit-Remaining": "0",
                },
            ),
            "expired_token": lambda r: _json(
                401,
                {
                    "status": "error",
                    "message": "The OAuth token used to make this call expired 2 hour(s) ago.",
                    "correlationId": "7b7a2b8e-33f2-4a55-a6b1-9f0c6f1d2e3a",
                    "category": "EXPIRED_AUTHENTICATION",
                },
            ),
            "server_error": lambda r: _json(
                502,
                {
                    "status": "error",
                    "message": "internal error",
                    "correlationId": "0d3c0f1e-2b4a-4c5d-8e6f-7a8b9c0d1e2f",
                    "category": "INTERNAL_ERROR",
                },
            ),
        }
    )


# -- Segment (HTTP tracking API /v1/batch) --------------------------------------------------
# https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/ (errors:
# 200 for accepted batches, 400 for too large or malformed, 429 with Retry-After).


def segment(retry_after: str = "1") -> Fake:
    """Segment's batch endpoint."""
    return Fake(
        {
            "success": lambda r: _json(200, {"success": True}),
            "too_large": lambda r: _json(
                400,
                {
                    "success": False,
                    "message": "batch size exceeds 500KB",
                    "code": "invalid_request",
                },
            ),
            "rate_limit": lambda r: Answer(
                429,
                {"Retry-After": retry_after, "Content-Type": "text/plain"},
                b"Too Many Requests",
            ),
            "bad_key": lambda r: _json(
                401, {"success": False, "message": "Invalid write key", "code": "unauthorized"}
            ),
            "server_error": lambda r: Answer(
                503, {"Content-Type": "text/plain"}, b"Service Unavailable"
            ),
        }
    )


# -- Slack (incoming webhooks) --------------------------------------------------------------
# https://api.slack.com/messaging/webhooks#handling_errors: plain-text answers, "ok" or an
# error word with its status; https://api.slack.com/apis/rate-limits: 429 with Retry-After.


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, {"Content-Type": "text/html", **(headers or {})}, text.encode())


def slack(retry_after: str = "1") -> Fake:
    """A Slack incoming webhook."""
    return Fake(
        {
            "success": lambda r: _text(200, "ok"),
            "invalid_payload": lambda r: _text(400, "invalid_payload"),
            "channel_is_archived": lambda r: _text(410, "channel_is_archived"),
            "rate_limit": lambda r: _text(429, "rate_limited", {"Retry-After": retry_after}),
            "invalid_token": lambda r: _text(403, "invalid_token"),
            "no_service": lambda r: _text(404, "no_service"),
            "server_error": lambda r: _text(500, "rollup_error"),
        }
    )


# -- Mailchimp (Marketing API 3.0, batch subscribe) -----------------------------------------
# https://mailchimp.com/developer/marketing/api/lists/batch-subscribe-or-unsubscribe/ (200 with
# per-member errors) and .../docs/errors/ (RFC 7807 problem documents, 429 for more than 10
# simultaneous connections, no Retry-After).


def _problem(status: int, title: str, detail: str) -> Answer:
    return Answer(
        status,
        {"Content-Type": "application/problem+json; charset=utf-8"},
        orjson.dumps(
            {
                "type": "https://mailchimp.com/developer/marketing/docs/errors/",
                "title": title,
                "status": status,
                "detail": detail,
                "instance": "2f3e1a0b-9c8d-4e7f-a6b5-c4d3e2f1a0b9",
            }
        ),
    )


def _mailchimp_batch(r: Received) -> Answer:
    members = r.json()["members"]
    good = [m for m in members if "invalid" not in m["email_address"]]
    errors = [
        {
            "email_address": m["email_address"],
            "error": f"{m['email_address']} looks fake or invalid, please enter a real email "
            "address.",
            "error_code": "ERROR_GENERIC",
        }
        for m in members
        if "invalid" in m["email_address"]
    ]
    return _json(
        200,
        {
            "new_members": [
                {"id": f"{n:032x}", "email_address": m["email_address"], "status": m["status"]}
                for n, m in enumerate(good)
            ],
            "updated_members": [],
            "errors": errors,
            "total_created": len(good),
            "total_updated": 0,
            "error_count": len(errors),
            "_links": [],
        },
    )


def mailchimp() -> Fake:
    """Mailchimp's batch subscribe endpoint (members containing "invalid" are refused)."""
    return Fake(
        {
            "success": _mailchimp_batch,
            "rate_limit": lambda r: _problem(
                429,
                "Too Many Requests",
                "You have exceeded the limit of 10 simultaneous connections.",
            ),
            "bad_key": lambda r: _problem(
                401,
                "API Key Invalid",
                "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
            ),
            "server_error": lambda r: _problem(
                503, "Service Unavailable", "The service is temporarily unavailable."
            ),
        }
    )


# -- Brevo (API v3 contacts) ----------------------------------------------------------------
# https://developers.brevo.com/reference/createcontact (201 {"id"} created, 204 updated, 400
# {"code","message"}), .../docs/api-limits (429 with x-sib-ratelimit-* headers).


def _brevo_create(r: Received) -> Answer:
    body = r.json()
    if "invalid" in str(body.get("email", "")):
        return _json(400, {"code": "invalid_parameter", "message": "Invalid email address"})
    if str(body.get("email", "")).startswith("known"):
        return Answer(204, {}, b"")
    return _json(201, {"id": 4711})


def brevo(reset: str = "1") -> Fake:
    """Brevo's create-contact endpoint (an email with "invalid" is refused, one starting with
    "known" is an update)."""
    return Fake(
        {
            "success": _brevo_create,
            "rate_limit": lambda r: _json(
                429,
                {"code": "too_many_requests", "message": "The expected rate limit is exceeded."},
                {
                    "x-sib-ratelimit-limit": "10",
                    "x-sib-ratelimit-remaining": "0",
                    "x-sib-ratelimit-reset": reset,
                },
            ),
            "bad_key": lambda r: _json(401, {"code": "unauthorized", "message": "Key not found"}),
            "server_error": lambda r: _json(
                500, {"code": "internal_error", "message": "Internal server error"}
            ),
        }
    )


# -- Klaviyo (JSON:API, profile import and bulk import jobs) --------------------------------
# https://developers.klaviyo.com/en/reference/create_or_update_profile (200 updated, 201
# created), .../bulk_import_profiles (202), .../docs/rate_limits_and_error_handling (429 with
# Retry-After and RateLimit-* headers; errors as a JSON:API "errors" array).

JSON_API = {"Content-Type": "application/vnd.api+json"}


def _klaviyo_error(status: int, code: str, title: str, detail: str, pointer: str | None) -> Answer:
    err: dict[str, Any] = {
        "id": "6d1c7b2e-1f0a-4a3b-9c8d-7e6f5a4b3c2d",
        "status": status,
        "code": code,
        "title": title,
        "detail": detail,
        "links": {},
        "meta": {},
    }
    if pointer:
        err["source"] = {"pointer": pointer}
    return Answer(status, JSON_API, orjson.dumps({"errors": [err]}))


def _klaviyo_import(r: Received) -> Answer:
    doc = r.json()["data"]
    if doc["type"] == "profile-bulk-import-job":
        job = {
            "type": "profile-bulk-import-job",
            "id": "ZXhhbXBsZWpvYmlk",
            "attributes": {
                "status": "queued",
                "total_count": len(doc["attributes"]["profiles"]["data"]),
                "completed_count": 0,
                "failed_count": 0,
                "created_at": "2026-12-06T09:00:00+00:00",
            },
            "links": {
                "self": "https://a.klaviyo.com/api/profile-bulk-import-jobs/ZXhhbXBsZWpvYmlk/"
            },
        }
        return Answer(202, JSON_API, orjson.dumps({"data": job}))
    attrs = doc["attributes"]
    if "invalid" in str(attrs.get("phone_number", "")) or "invalid" in str(attrs.get("email", "")):
        return _klaviyo_error(
            400, "invalid", "Invalid input.", "Invalid email address", "/data/attributes/email"
        )
    status = 200 if str(attrs.get("email", "")).startswith("known") else 201
    pid = "01HXYZPROFILEID000000000"
    body = {
        "data": {
            "type": "profile",
            "id": pid,
            "attributes": {
                **attrs,
                "created": "2026-12-06T09:00:00+00:00",
                "updated": "2026-12-06T09:00:00+00:00",
            },
            "links": {"self": f"https://a.klaviyo.com/api/profiles/{pid}/"},
        }
    }
    return Answer(status, JSON_API, orjson.dumps(body))


def klaviyo(retry_after: str = "1") -> Fake:
    """Klaviyo's profile-import and profile-bulk-import-jobs endpoints."""
    return Fake(
        {
            "success": _klaviyo_import,
            "rate_limit": lambda r: Answer(
                429,
                {
                    **JSON_API,
                    "Retry-After": retry_after,
                    "RateLimit-Limit": "75",
                    "RateLimit-Remaining": "0",
                    "RateLimit-Reset": retry_after,
                },
                orjson.dumps(
                    {
                        "errors": [
                            {
                                "status": 429,
                                "code": "throttled",
                                "title": "Request was throttled.",
                                "detail": "Request was throttled. Expected available in "
                                f"{retry_after} second.",
                            }
                        ]
                    }
                ),
            ),
            "bad_key": lambda r: _klaviyo_error(
                401,
                "not_authenticated",
                "Authentication credentials were not provided.",
                "Missing or invalid private key.",
                None,
            ),
            "server_error": lambda r: _klaviyo_error(
                503, "service_unavailable", "Service Unavailable", "Try again later.", None
            ),
        }
    )


# -- Salesforce (OAuth2 client credentials, sObject Collections upsert) --------------------
# https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_client_credentials_flow.htm
# (token answer), https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/
# resources_composite_sobjects_collections_upsert.htm (per-record results, in order),
# .../errorcodes.htm (401 INVALID_SESSION_ID, 403 REQUEST_LIMIT_EXCEEDED, 503).

CLIENT_ID = "3MVG9fakeConsumerKey"
CLIENT_SECRET = "0123456789ABCDEF"


class SalesforceFake(Fake):
    """A Salesforce org: a token endpoint that hands out a new session each time, and the
    collections endpoint, which only takes the newest session (``expired_token`` ends it)."""

    def __init__(self) -> None:
        super().__init__(
            {
                "success": self._upsert,
                "expired_token": self._expire,
                "rate_limit": lambda r: _json(
                    403,
                    [
                        {
                            "message": "TotalRequests Limit exceeded.",
                            "errorCode": "REQUEST_LIMIT_EXCEEDED",
                        }
                    ],
                ),
                "locked": lambda r: self._upsert(r, locked=True),
                "server_error": lambda r: _json(
                    503,
                    [
                        {
                            "message": "Server temporarily unavailable",
                            "errorCode": "SERVER_UNAVAILABLE",
                        }
                    ],
                ),
            }
        )
        self.tokens_issued = 0
        self.valid: str | None = None
        self.token_requests: list[dict[str, list[str]]] = []

    def __call__(self, r: Received) -> Answer:
        if r.path == "/services/oauth2/token":
            return self._token(r)
        auth = r.headers.get("Authorization", "")
        if auth != f"Bearer {self.valid}":
            return self._session_error()
        return super().__call__(r)

    def _token(self, r: Received) -> Answer:
        from urllib.parse import parse_qs

        form = parse_qs(r.body.decode())
        self.token_requests.append(form)
        if (
            form.get("grant_type") != ["client_credentials"]
            or form.get("client_id") != [CLIENT_ID]
            or form.get("client_secret") != [CLIENT_SECRET]
        ):
            return _json(
                400, {"error": "invalid_client", "error_description": "invalid client credentials"}
            )
        self.tokens_issued += 1
        self.valid = f"00DFAKE!session{self.tokens_issued}"
        return _json(
            200,
            {
                "access_token": self.valid,
                "instance_url": "https://acme.my.salesforce.com",
                "id": "https://login.salesforce.com/id/00DFAKE/005FAKE",
                "token_type": "Bearer",
                "issued_at": "1796547783000",
                "signature": "c2lnbmF0dXJl",
            },
        )

    @staticmethod
    def _session_error() -> Answer:
        return _json(
            401, [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
        )

    def _expire(self, r: Received) -> Answer:
        self.valid = None
        return self._session_error()

    @staticmethod
    def _upsert(r: Received, locked: bool = False) -> Answer:
        results = []
        for n, rec in enumerate(r.json()["records"]):
            if "invalid" in str(rec.get("Email", "")):
                results.append(
                    {
                        "success": False,
                        "errors": [
                            {
                                "statusCode": "INVALID_EMAIL_ADDRESS",
                                "message": f"Email: invalid email address: {rec['Email']}",
                                "fields": ["Email"],
                            }
                        ],
                    }
                )
            elif locked and n == 0:
                results.append(
                    {
                        "success": False,
                        "errors": [
                            {
                                "statusCode": "UNABLE_TO_LOCK_ROW",
                                "message": "unable to obtain exclusive access to this record",
                                "fields": [],
                            }
                        ],
                    }
                )
            else:
                results.append(
                    {"id": f"003FAKE{n:011d}", "success": True, "errors": [], "created": True}
                )
        return _json(200, results)


def salesforce() -> SalesforceFake:
    """A Salesforce org (records whose Email contains "invalid" are refused)."""
    return SalesforceFake()
