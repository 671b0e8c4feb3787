"""Turn validated handler settings into handler objects: one factory per `type`, one way to dispatch."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable

from spoold.errors import ConfigError
from spoold.handlers.base import Handler
from spoold.handlers.config import (
    AnyHandlerConfig,
    CopyConfig,
    ExecConfig,
    LabelStudioConfig,
    PostgresConfig,
    PythonConfig,
    S3Config,
    WebhookConfig,
)
from spoold.handlers.copy_files import CopyHandler
from spoold.handlers.exec_command import ExecHandler
from spoold.handlers.label_studio import LabelStudioHandler
from spoold.handlers.postgres import PostgresHandler
from spoold.handlers.s3 import S3Handler
from spoold.handlers.webhook import WebhookHandler


def load_class(spec: str) -> type[Handler]:
    """Import `package.module:Class`; ValueError in one sentence if it is missing or not a Handler."""
    module_name, _, attr_path = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as exc:
        raise ValueError(f"cannot import {module_name}: {exc}") from None
    obj: object = module
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ValueError(f"{module_name} has no {attr_path}") from None
    if not (isinstance(obj, type) and issubclass(obj, Handler)):
        raise ValueError(f"{spec} is not a subclass of spoold.handlers.base.Handler")
    return obj


def _python_handler(config: PythonConfig) -> Handler:
    return load_class(config.class_)(config.settings)


_FACTORIES: dict[type, Callable[[AnyHandlerConfig], Handler]] = {
    WebhookConfig: WebhookHandler,  # type: ignore[dict-item]
    ExecConfig: ExecHandler,  # type: ignore[dict-item]
    CopyConfig: CopyHandler,  # type: ignore[dict-item]
    PythonConfig: _python_handler,  # type: ignore[dict-item]
    # these three import their library in the constructor: a missing extra is a ConfigError at start and on reload
    S3Config: S3Handler,  # type: ignore[dict-item]
    PostgresConfig: PostgresHandler,  # type: ignore[dict-item]
    LabelStudioConfig: LabelStudioHandler,  # type: ignore[dict-item]
}


def build_handler(config: AnyHandlerConfig) -> Handler:
    """The handler object for one configured handler; ConfigError if it cannot be set up."""
    try:
        return _FACTORIES[type(config)](config)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"handler {config.name} ({config.type}): {exc}") from None


def build_handlers(configs: Iterable[AnyHandlerConfig]) -> dict[str, Handler]:
    return {config.name: build_handler(config) for config in configs}
