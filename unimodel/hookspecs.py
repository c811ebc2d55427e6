"""Every hook a unimodel plugin can implement.

A plugin is a module (or object) registered under the ``unimodel`` entry-point
group; it implements some of these hooks with ``@unimodel.hookimpl``. The core
calls each hook of each plugin separately, so one plugin raising does not hide
the others' results: the failure is recorded and shown by ``unimodel doctor``.

Hooks are called when the registry is first used (``unimodel list``,
``build_model`` ...). They must be cheap: return metadata and import paths, never
import torch or build modules. The heavy code is imported only when a component
is built.

Plugin-API version policy: :data:`PLUGIN_API_VERSION` is an integer. It goes up
only when a hook is removed or changes meaning; adding a hook or an optional
:class:`~unimodel.registry.Component` field does not change it. A plugin states
the version it targets with :func:`unimodel_api_version`; a plugin targeting a
different major version is reported by ``unimodel doctor`` and not loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from unimodel.registry import Component

PROJECT = "unimodel"
PLUGIN_API_VERSION = 1

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def unimodel_api_version() -> int:
    """The plugin-API version this plugin targets (see :data:`PLUGIN_API_VERSION`).

    Called once per plugin at discovery, before :func:`unimodel_components`.
    A plugin that does not implement it is assumed to target the current version
    and is flagged by ``unimodel doctor``. Every plugin's answer is used (not
    first-result).
    """
    raise NotImplementedError  # a specification: plugins implement it


@hookspec
def unimodel_components() -> list[Component]:
    """The components this plugin provides.

    Called once per plugin at discovery. Returns a list of
    :class:`unimodel.registry.Component` records: kind, name, the import path of
    the object to build, and metadata (summary, capabilities, presets). Nothing
    is imported from those paths until the component is used.

    Kinds the core knows: ``model`` (a backbone family or a preset of one),
    ``encoder``, ``decoder``, ``objective``, ``decoding`` (a generation strategy),
    ``hf_converter`` (Hugging Face import/export for some ``model_type``s),
    ``corpus`` (a text source) and ``data`` (a data kind). Every plugin's list is
    used; a (kind, name) given by two plugins is reachable by its qualified name
    ``plugin:name``, and the plain name then names neither.
    """
    raise NotImplementedError  # a specification: plugins implement it


@hookspec
def unimodel_checkpoint_loaded(model: object, path: str) -> None:
    """Called after :func:`unimodel.load` or :func:`unimodel.from_hf` built a model.

    Lets a plugin attach extras it saved beside the weights (a codebook
    tokenizer, say). Every implementation is called; return values are ignored.
    """
