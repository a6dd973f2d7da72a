"""Stream functions: the registry in the fabric and the workers that run them."""

from perper_lab.runtime.registry import (
    ErrorPolicy,
    FunctionSpec,
    get_function,
    list_functions,
    register_function,
    stop_function,
)
from perper_lab.runtime.worker import Worker

__all__ = ["ErrorPolicy", "FunctionSpec", "Worker", "get_function", "list_functions", "register_function",
           "stop_function"]
