"""`GET /openapi.json`: a server's API described from its routes and request models.

The document is derived, never written by hand: paths and methods come from the Starlette
routes, request bodies from the pydantic models the handlers validate with, JSON answers from
the models the handlers build them from, so it cannot drift from what the server accepts and
sends. Fuzz tests (schemathesis) read it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from rbee.dataplane.protocol.wire import VERSION

OPENAPI_PATH = "/openapi.json"
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        }
    },
}


def openapi_document(
    title: str,
    routes: Sequence[BaseRoute],
    *,
    bodies: Mapping[str, type[BaseModel]],
    queries: Mapping[str, Collection[str]],
    public_paths: Collection[str],
    answers: Mapping[str, type[BaseModel]] | None = None,
) -> dict[str, Any]:
    """OpenAPI 3.1 for `routes`; `bodies`, `answers` (a 2xx JSON body) and `queries` are keyed
    by route path."""
    answers = answers or {}
    by_model, defs = models_json_schema(
        [(model, "validation") for model in bodies.values()]
        + [(model, "serialization") for model in answers.values()],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = {"Error": _ERROR_SCHEMA, **defs.get("$defs", {})}
    paths: dict[str, Any] = {}
    for route in routes:
        if not isinstance(route, Route) or route.path == OPENAPI_PATH:
            continue
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in route.param_convertors
        ]
        params += [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in queries.get(route.path, ())
        ]
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            operation: dict[str, Any] = {
                "operationId": f"{method.lower()}{route.path_format}",
                "summary": (route.endpoint.__doc__ or route.name).strip().splitlines()[0],
                "parameters": params,
                "responses": {
                    "2XX": {"description": "success"},
                    "default": {
                        "description": "error",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    },
                },
            }
            model = bodies.get(route.path)
            if model is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": by_model[(model, "validation")]}},
                }
            answer = answers.get(route.path)
            if answer is not None:
                operation["responses"]["2XX"]["content"] = {
                    "application/json": {"schema": by_model[(answer, "serialization")]}
                }
            if route.path not in public_paths:
                operation["security"] = [{"bearer": []}]
            paths.setdefault(route.path_format, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": VERSION},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def openapi_route(
    title: str,
    routes: Sequence[BaseRoute],
    *,
    bodies: Mapping[str, type[BaseModel]],
    queries: Mapping[str, Collection[str]] | None = None,
    public_paths: Collection[str],
    answers: Mapping[str, type[BaseModel]] | None = None,
) -> Route:
    """The route serving the document (built once, at the first request)."""
    document: dict[str, Any] = {}

    async def openapi(_request: Request) -> JSONResponse:
        """This API's OpenAPI document."""
        if not document:
            document.update(
                openapi_document(
                    title,
                    routes,
                    bodies=bodies,
                    queries=queries or {},
                    public_paths=public_paths,
                    answers=answers,
                )
            )
        return JSONResponse(document)

    return Route(OPENAPI_PATH, openapi)
