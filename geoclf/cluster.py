"""Dask clusters described in a recipe file: local, an existing scheduler, or cloud VMs via dask-cloudprovider.

A recipe is a small YAML file naming where the workers come from, how many there are and what runs on
them. :func:`cluster_from_recipe` builds the cluster and yields something every parallel stage accepts as
its ``scheduler`` argument (see :func:`tiling.parallel.dask_client`); the cluster, and so every cloud VM
it started, is closed when the block ends, also on errors and Ctrl-C.

Recipe keys::

    provider: azure             # azure | aws | gcp | local | address
    cluster_class: AzureVMCluster   # the dask-cloudprovider class (default: the provider's usual one)
    options:                    # keyword arguments of that class, checked against its signature
      location: westeurope
      vm_size: Standard_D4s_v5
    workers: 4                  # a fixed number of workers, or
    adaptive: {minimum: 0, maximum: 8}   # scale between these as the work needs (cluster.adapt)
    environment:                # what the worker machines run
      docker_image: ghcr.io/dask/dask:2024.8.2-py3.11
      pip: [geoclf==0.1.0]      # installed when the container starts (EXTRA_PIP_PACKAGES)
      env: {AWS_REQUEST_PAYER: requester}   # set in every scheduler/worker container
    address: tcp://10.0.0.5:8786   # provider: address only

The cloud SDKs are imported only when a recipe asks for their provider, so ``geoclf`` needs
dask-cloudprovider (the ``cloud`` extra) only on the machine that starts cloud clusters.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiling.errors import InputError
from tiling.parallel import (
    Scheduler,
    dashboard_address,
    default_workers,
    local_cluster_config,
    quiet_shutdown,
    worker_environment,
)

#: Provider -> (module holding its cluster classes, the classes a recipe may name, the default class).
PROVIDERS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "azure": ("dask_cloudprovider.azure", ("AzureVMCluster",), "AzureVMCluster"),
    "aws": ("dask_cloudprovider.aws", ("EC2Cluster", "FargateCluster", "ECSCluster"), "EC2Cluster"),
    "gcp": ("dask_cloudprovider.gcp", ("GCPCluster",), "GCPCluster"),
    "local": ("distributed", ("LocalCluster",), "LocalCluster"),
    "address": ("", (), ""),
}

#: Environment variable the Dask Docker images read to ``pip install`` packages when a container starts.
PIP_ENV = "EXTRA_PIP_PACKAGES"

_TOP_KEYS = ("provider", "cluster_class", "options", "workers", "adaptive", "environment", "address")
_ENVIRONMENT_KEYS = ("docker_image", "pip", "env")
# Class arguments the recipe sets through its own keys; naming them under options as well would leave
# two places saying different things.
_RECIPE_OWNED = {"n_workers": "workers", "docker_image": "environment.docker_image",
                 "image": "environment.docker_image", "env_vars": "environment.env",
                 "environment": "environment.env", "asynchronous": None, "loop": None}
# The keyword arguments, per cluster family, that carry the image and the environment variables.
_IMAGE_ARG = {"ECSCluster": "image", "FargateCluster": "image"}
_ENV_ARG = {"ECSCluster": "environment", "FargateCluster": "environment"}


@dataclass(frozen=True)
class ClusterRecipe:
    """A parsed and checked cluster recipe (see the module docstring for the file format).

    Attributes:
        provider: ``azure``, ``aws``, ``gcp``, ``local`` or ``address``.
        cluster_class: name of the cluster class (empty for ``address``).
        options: keyword arguments of the cluster class as written in the recipe.
        workers: fixed worker count (``None`` with adaptive scaling).
        adaptive: ``{"minimum": m, "maximum": n}`` for adaptive scaling, else ``None``.
        docker_image: image of the scheduler and worker machines (cloud providers).
        pip: packages installed into the image when a machine starts (cloud providers).
        env: environment variables of the scheduler and worker processes.
        address: scheduler address (``address`` provider).
        path: the recipe file, for messages.
    """

    provider: str
    cluster_class: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    workers: int | None = None
    adaptive: dict[str, int] | None = None
    docker_image: str | None = None
    pip: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    address: str | None = None
    path: str | None = None

    def cluster_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the cluster class is constructed with: options, workers, image and env."""
        if self.provider == "address":
            return {}
        kwargs = dict(self.options)
        initial = self.adaptive["minimum"] if self.adaptive else self.workers
        if self.provider == "local":
            kwargs.setdefault("processes", True)
            kwargs.setdefault("threads_per_worker", 1)
            if "dashboard_address" not in kwargs:  # loopback unless the recipe or GEOCLF_DASHBOARD opens it
                kwargs["dashboard_address"] = dashboard_address()
            kwargs["n_workers"] = default_workers() if initial is None else initial
            return kwargs
        if initial is not None:
            kwargs["n_workers"] = initial
        if self.cluster_class == "GCPCluster" and "ngpus" not in kwargs:
            # dask-cloudprovider's default configuration leaves these as "", which GCPCluster itself then
            # compares with 0 and fails on: CPU machines unless the recipe asks for GPUs
            kwargs.setdefault("scheduler_ngpus", 0)
            kwargs.setdefault("worker_ngpus", 0)
        if self.docker_image:
            kwargs[_IMAGE_ARG.get(self.cluster_class, "docker_image")] = self.docker_image
        kwargs[_ENV_ARG.get(self.cluster_class, "env_vars")] = self.worker_env()
        return kwargs

    def worker_env(self) -> dict[str, str]:
        """Environment of remote scheduler and worker containers.

        geoclf's worker defaults (the malloc tunables and single-threaded BLAS that Dask sets for its
        local workers) come first, so remote workers behave like local ones; the recipe's ``env`` wins.
        """
        env = worker_environment()
        if self.pip:
            env[PIP_ENV] = " ".join(self.pip)
        env.update(self.env)
        return env


def read_recipe(path: str | os.PathLike[str]) -> ClusterRecipe:
    """Read and check a cluster recipe file.

    The cluster class's keyword arguments are checked against its signature, so a misspelt option fails
    here, in one line, rather than after minutes of starting VMs.

    Raises:
        InputError: the file is missing or not YAML, an unknown key, provider, class or class argument
            (the message lists the valid ones), a bad worker count or adaptive range.
    """
    import yaml

    where = os.fspath(path)
    try:
        document = yaml.safe_load(Path(where).read_text())
    except FileNotFoundError as exc:
        raise InputError("no such cluster recipe", where) from exc
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot be read as a YAML cluster recipe ({' '.join(str(exc).split())})", where) from exc
    if not isinstance(document, Mapping):
        raise InputError("a cluster recipe is a YAML mapping with at least 'provider'", where)
    _check_keys(document, _TOP_KEYS, "recipe key", where)
    provider = str(document.get("provider") or "")
    if provider not in PROVIDERS:
        raise InputError(f"unknown provider {provider!r}; valid providers: {', '.join(PROVIDERS)}", where)
    if provider == "address":
        address = document.get("address")
        if not isinstance(address, str) or "://" not in address:
            raise InputError("provider 'address' needs address: tcp://HOST:PORT", where)
        extra = [k for k in document if k not in ("provider", "address")]
        if extra:
            raise InputError(f"{extra[0]!r} does not apply to an existing scheduler (provider: address); "
                             "size and set up its workers where they are started", where)
        return ClusterRecipe(provider, address=address, path=where)
    if "address" in document:
        raise InputError(f"'address' only applies to provider: address, not {provider}", where)

    _, allowed, default = PROVIDERS[provider]
    class_name = str(document.get("cluster_class") or default)
    if class_name not in allowed:
        raise InputError(f"unknown cluster_class {class_name!r} for provider {provider}; valid classes: "
                         f"{', '.join(allowed)}", where)
    options = document.get("options") or {}
    if not isinstance(options, Mapping):
        raise InputError("options must be a mapping of the cluster class's keyword arguments", where)
    options = {str(k): v for k, v in options.items()}
    valid = cluster_arguments(_cluster_class(provider, class_name))
    for key in options:
        if key in _RECIPE_OWNED:
            owner = _RECIPE_OWNED[key]
            raise InputError(f"option {key!r} is set by the recipe itself" +
                             (f"; use '{owner}'" if owner else "; remove it"), where)
        if key not in valid:
            raise InputError(f"unknown option {key!r} for {class_name}; valid options: "
                             f"{', '.join(sorted(k for k in valid if k not in _RECIPE_OWNED))}", where)

    workers, adaptive = _scaling(document, where)
    environment = document.get("environment") or {}
    if not isinstance(environment, Mapping):
        raise InputError("environment must be a mapping (docker_image, pip, env)", where)
    _check_keys(environment, _ENVIRONMENT_KEYS, "environment key", where)
    pip = environment.get("pip") or []
    if isinstance(pip, str):
        pip = pip.split()
    env = environment.get("env") or {}
    if not isinstance(env, Mapping):
        raise InputError("environment.env must be a mapping of variable names to values", where)
    image = environment.get("docker_image")
    if provider == "local" and (image or pip):
        raise InputError("a local cluster runs in this Python environment; docker_image and pip apply to cloud "
                         "providers only", where)
    return ClusterRecipe(provider, class_name, options, workers, adaptive, None if image is None else str(image),
                         tuple(str(p) for p in pip), {str(k): str(v) for k, v in env.items()}, path=where)


def cluster_arguments(cluster_class: type) -> set[str]:
    """Keyword arguments a cluster class accepts, following ``**kwargs`` up to the base classes.

    dask-cloudprovider classes take their own arguments and pass the rest on (``AzureVMCluster`` ->
    ``VMCluster`` -> ``SpecCluster``), so the valid set is the union along the class hierarchy up to the
    first ``__init__`` without ``**kwargs``.
    """
    names: set[str] = set()
    classes: list[type] = list(cluster_class.__mro__)
    from distributed import LocalCluster, Nanny, Worker

    if issubclass(cluster_class, LocalCluster):
        # LocalCluster's **kwargs go to each worker (memory_limit, ...), not to its base class
        classes = [LocalCluster, Nanny, Worker]
    for klass in classes:
        if "__init__" not in vars(klass) or klass is object:
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names.update(p.name for p in parameters
                     if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


def build_cluster(recipe: ClusterRecipe) -> Any:
    """Construct (and so start) the cluster a recipe describes; the caller closes it.

    Returns:
        The cluster object, or the scheduler address for provider ``address``.

    Raises:
        InputError: the provider's SDK is not installed, or the cluster class refuses the settings.
    """
    if recipe.provider == "address":
        return recipe.address
    cluster_class = _cluster_class(recipe.provider, recipe.cluster_class)
    kwargs = recipe.cluster_kwargs()
    if recipe.provider == "local":
        import dask

        # workers must be spawned with the environment (malloc tunables, BLAS threads) set beforehand
        config = local_cluster_config()
        config["distributed.nanny.pre-spawn-environ"] = {**worker_environment(), **recipe.env}
        with dask.config.set(config):
            cluster = cluster_class(**kwargs)
    else:
        try:
            cluster = cluster_class(**kwargs)
        except (TypeError, ValueError) as exc:
            # dask-cloudprovider checks option combinations itself (TypeError/ValueError/ConfigError,
            # the latter a plain Exception subclass handled below)
            raise InputError(f"{recipe.cluster_class} refused the recipe's settings: {_one_line(exc)}",
                             recipe.path) from exc
        except Exception as exc:
            if type(exc).__name__ != "ConfigError":
                raise
            raise InputError(f"{recipe.cluster_class} is not configured: {_one_line(exc)}", recipe.path) from exc
    if recipe.adaptive:
        try:
            cluster.adapt(minimum=recipe.adaptive["minimum"], maximum=recipe.adaptive["maximum"])
        except BaseException:
            cluster.close()
            raise
    return cluster


@contextmanager
def cluster_from_recipe(path: str | os.PathLike[str], quiet: bool = False) -> Iterator[Scheduler]:
    """Start the cluster a recipe file describes, yield it, and close it when the block ends.

    The value yielded is what ``scheduler`` arguments take (:func:`tiling.parallel.dask_client`): a
    cluster object, or a scheduler address for ``provider: address``. Closing a cloud cluster deletes its
    VMs; a cluster that fails to start is not left behind either.

    Args:
        path: the recipe file (YAML).
        quiet: do not print what is being started (to stderr).

    Raises:
        InputError: see :func:`read_recipe` and :func:`build_cluster`.
    """
    recipe = read_recipe(path)
    if not quiet:
        print(f"geoclf: starting {describe(recipe)}", file=sys.stderr)
    cluster = build_cluster(recipe)
    failed = True
    try:
        yield cluster
        failed = False
    finally:
        if not isinstance(cluster, str):
            with quiet_shutdown(failed):
                cluster.close()


@contextmanager
def scheduler_from_option(value: str | None, quiet: bool = False) -> Iterator[Scheduler]:
    """The scheduler a ``--cluster`` option names: ``auto``, ``local``, ``sync``, a ``tcp://`` address or a recipe
    file (``auto`` is left to the command: see :func:`geoclf.partitions.partition_scheduler`).

    Raises:
        InputError: the value is none of these (e.g. a recipe path that does not exist).
    """
    if value is None or value in ("auto", "local", "sync") or "://" in value:
        yield value
        return
    if not Path(value).is_file():
        raise InputError("is neither 'local', 'sync', a scheduler address (tcp://HOST:PORT) nor a cluster "
                         "recipe file", value)
    with cluster_from_recipe(value, quiet=quiet) as cluster:
        yield cluster


def describe(recipe: ClusterRecipe) -> str:
    """One line saying what a recipe starts, e.g. ``AzureVMCluster, adaptive 0-8 workers``."""
    if recipe.provider == "address":
        return f"a client of the scheduler at {recipe.address}"
    if recipe.adaptive:
        size = f"adaptive {recipe.adaptive['minimum']}-{recipe.adaptive['maximum']} workers"
    else:
        size = f"{recipe.workers if recipe.workers is not None else 'default'} workers"
    return f"{recipe.cluster_class} ({recipe.provider}), {size}"


def _cluster_class(provider: str, class_name: str) -> type:
    module = PROVIDERS[provider][0]
    try:
        return getattr(importlib.import_module(module), class_name)
    except ImportError as exc:
        raise InputError(f"provider {provider!r} needs dask-cloudprovider with its {provider} extra: "
                         f"pip install 'geoclf[cloud]' ({_one_line(exc)})") from exc


def _scaling(document: Mapping[str, Any], where: str) -> tuple[int | None, dict[str, int] | None]:
    workers = document.get("workers")
    adaptive = document.get("adaptive")
    if workers is not None and adaptive is not None:
        raise InputError("give either workers (a fixed count) or adaptive (minimum/maximum), not both", where)
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise InputError(f"workers must be a whole number of 0 or more, not {workers!r}", where)
        return workers, None
    if adaptive is None:
        return None, None
    if not isinstance(adaptive, Mapping):
        raise InputError("adaptive must be a mapping: {minimum: 0, maximum: N}", where)
    _check_keys(adaptive, ("minimum", "maximum"), "adaptive key", where)
    minimum, maximum = adaptive.get("minimum", 0), adaptive.get("maximum")
    numbers = (minimum, maximum)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in numbers) or minimum < 0 or maximum < max(1, minimum):
        raise InputError(f"adaptive needs whole numbers 0 <= minimum <= maximum and maximum >= 1, got "
                         f"minimum={minimum!r}, maximum={maximum!r}", where)
    return None, {"minimum": minimum, "maximum": maximum}


def _check_keys(mapping: Mapping[str, Any], valid: tuple[str, ...], what: str, where: str) -> None:
    unknown = [str(k) for k in mapping if k not in valid]
    if unknown:
        raise InputError(f"unknown {what} {unknown[0]!r}; valid keys: {', '.join(valid)}", where)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
