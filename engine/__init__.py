"""Loom's engine: typed nodes, workflow validation, cached execution, events. No HTTP, no terminal."""
from .cache import OutputCache
from .context import CancelToken, Env, NodeContext
from .errors import ErrorItem, Interrupted, WorkflowError
from .events import Event
from .executor import Executor, RunResult
from .node import (Boolean, Combo, Float, Input, Int, Node, Output, Registry, Result, Seed, Socket,
                   String)
from .workflow import Link, Workflow, load, parse_api

__all__ = ["OutputCache", "CancelToken", "Env", "NodeContext", "ErrorItem", "Interrupted", "WorkflowError",
           "Event", "Executor", "RunResult", "Boolean", "Combo", "Float", "Input", "Int", "Node", "Output",
           "Registry", "Result", "Seed", "Socket", "String", "Link", "Workflow", "load", "parse_api"]
