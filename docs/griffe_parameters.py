"""A griffe extension for the API reference (mkdocs.yml): the signature of a function that takes
another's parameters.

``charloom.run.train`` is written ``@_parameters_of(run_training) def train(*args, **kwargs)``,
so that its parameters and their defaults have one home, ``charloom.train.train``. At run time
the decorator gives it that function's signature (``help()`` and ``inspect.signature`` show it);
mkdocstrings reads the source without running it, and this extension does the same for the page.
"""

from __future__ import annotations

from typing import Any

import griffe

#: The decorator's name in charloom's source (``charloom.run._parameters_of``).
DECORATOR = "_parameters_of"


class ParametersOf(griffe.Extension):
    """Give each function decorated with ``@_parameters_of(base)`` the parameters of ``base``."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        done = 0
        for module in _modules(pkg):
            for member in list(module.members.values()):
                if member.is_alias or not isinstance(member, griffe.Function):
                    continue
                base = _base_name(member)
                if base is None:
                    continue
                source = module.members.get(base)
                target = source.final_target if isinstance(source, griffe.Alias) else source
                if not isinstance(target, griffe.Function):
                    raise griffe.GriffeError(
                        f"{member.path}: @{DECORATOR}({base}) names no function of {module.path}"
                    )
                member.parameters = target.parameters
                done += 1
        if pkg.name == "charloom" and not done:
            raise griffe.GriffeError(
                f"no function in charloom is decorated with @{DECORATOR}(...): rename the "
                "decorator here too, or take this extension out of mkdocs.yml"
            )


def _modules(module: griffe.Module) -> list[griffe.Module]:
    """``module`` and every module inside it."""
    found = [module]
    for sub in module.modules.values():
        if not sub.is_alias and isinstance(sub, griffe.Module):
            found.extend(_modules(sub))
    return found


def _base_name(function: griffe.Function) -> str | None:
    """The name ``base`` if ``function`` is decorated with ``@_parameters_of(base)``."""
    for decorator in function.decorators:
        call = decorator.value
        if (
            isinstance(call, griffe.ExprCall)
            and str(call.function) == DECORATOR
            and len(call.arguments) == 1
        ):
            return str(call.arguments[0])
    return None
