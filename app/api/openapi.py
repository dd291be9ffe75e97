"""Make the published OpenAPI schema describe the responses the app really sends.

FastAPI documents its default 422 body (`detail` = list of errors), but create_app's handler
answers `{"detail": "<field>: <message>", "errors": [...]}` (and HTTPException 422s carry only
`detail`). Requests with a body can also get 400 (body not UTF-8 / not JSON), 408 (body not received
within SEQREC_BODY_TIMEOUT_S) and 413 (BodyLimit middleware), whatever the route declares. Clients and the schema fuzzer
(tests/deploy/test_fuzz.py) validate against this.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorOut(BaseModel):
    detail: str = Field(description="The first problem, as `location: message`.")
    errors: list[FieldError] = Field(default_factory=list, description="Every problem found (at most 20).")


def _error(description: str) -> dict[str, Any]:
    detail = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
    return {"description": description, "content": {"application/json": {"schema": detail}}}


def document_validation_errors(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            body = ValidationErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components["HTTPValidationError"] = body
            for path in schema.get("paths", {}).values():
                for op in path.values():
                    if isinstance(op, dict) and "requestBody" in op:
                        responses = op.setdefault("responses", {})
                        for code, what in (
                            ("400", "Body is not valid JSON (or not UTF-8)"),
                            ("408", "Body not received within SEQREC_BODY_TIMEOUT_S; the connection is closed"),
                            ("413", "Request body too large"),
                        ):
                            responses.setdefault(code, _error(what))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
