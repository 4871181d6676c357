"""Cluster recipes: parsing and checking, and cloud clusters built from them against a fake cloud.

The cloud tests run dask-cloudprovider's real cluster classes. Only the cloud itself is fake: the SDK
clients (Azure's compute/network clients, aiobotocore's EC2 client, Google's compute API) are replaced by
:class:`FakeCloud`, which reads the cloud-init each "VM" is created with, as a real VM would, and runs
its ``docker run`` command in this process: a Dask scheduler or worker on 127.0.0.1. So the recipe's
settings are checked where they matter (in the VM requests sent to the provider) and the cluster object
really starts, scales, computes and shuts its VMs down.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shlex
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dask
import pytest
import yaml

from geoclf.cluster import cluster_arguments, cluster_from_recipe, read_recipe, scheduler_from_option
from tiling.errors import InputError
from tiling.parallel import WORKER_GLIBC_TUNABLES, dask_client

pytest.importorskip("dask_cloudprovider")


class FakeCloud:
    """A cloud whose VMs are Dask servers in this process, booted from the cloud-init they are sent.

    Attributes:
        requests: every VM creation request, as the provider's SDK received it, in order.
        machines: running machines by id: ``{"role", "server", "env", "image"}``.
        terminated: ids of machines deleted.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.machines: dict[str, dict[str, Any]] = {}
        self.terminated: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._lock = threading.Lock()

    def boot(self, machine_id: str, cloud_init: str, request: dict[str, Any]) -> str:
        """Create a VM: run the ``docker run`` line of its cloud-init; returns its IP address."""
        with self._lock:
            self.requests.append(request)
        # cloud-init is YAML; its runcmd list ends with the docker run line starting the Dask process
        line = next(c for c in yaml.safe_load(cloud_init)["runcmd"] if c.startswith("docker run"))
        words = shlex.split(line)
        env = {}
        i = words.index("run") + 1
        while words[i].startswith("-"):
            if words[i] == "-e":
                key, _, value = words[i + 1].partition("=")
                env[key] = value
                i += 2
            else:
                i += 1
        image, command = words[i], words[i + 1:]
        # The VM's Dask configuration travels in the command (DASK_INTERNAL_INHERIT_CONFIG): here it is the
        # configuration of this very process, TLS credentials included, so the servers below just use it.
        assert any(w.startswith("DASK_INTERNAL_INHERIT_CONFIG=") for w in command)
        module = command[command.index("-m") + 1]
        if module == "distributed.cli.dask_scheduler":
            port = int(command[command.index("--port") + 1]) if "--port" in command else 8786
            role, server = "scheduler", self._run(self._start_scheduler(port))
        else:
            spec = json.loads(command[command.index("--spec") + 1])
            address = command[command.index("--spec") - 1]
            role, server = "worker", self._run(self._start_worker(address, spec["opts"]["name"]))
        with self._lock:
            self.machines[machine_id] = {"role": role, "server": server, "env": env, "image": image}
        return "127.0.0.1"

    def terminate(self, machine_id: str) -> None:
        """Delete a VM: stop what runs on it."""
        machine = self.machines.pop(machine_id, None)
        self.terminated.append(machine_id)
        if machine is not None:
            self._run(machine["server"].close())

    def roles(self, role: str) -> list[dict[str, Any]]:
        """Requests of the VMs created for ``role`` (``scheduler`` or ``worker``)."""
        return [r for r in self.requests if r["role"] == role]

    def stop(self) -> None:
        """Stop every machine left and the cloud's event loop."""
        for machine_id in list(self.machines):
            self.terminate(machine_id)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _start_scheduler(self, port: int) -> Any:
        from distributed import Scheduler

        return await Scheduler(host="127.0.0.1", port=port, dashboard_address=":0")

    async def _start_worker(self, address: str, name: str) -> Any:
        from distributed import Worker

        return await Worker(address, name=name, nthreads=1, host="127.0.0.1")

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=60)


def _role(cloud_init: str) -> str:
    return "scheduler" if "distributed.cli.dask_scheduler" in cloud_init else "worker"


# -- the providers' SDKs, faked at their boundary ------------------------------------------------------------

def fake_azure(monkeypatch: pytest.MonkeyPatch, cloud: FakeCloud) -> None:
    """Azure: ``DefaultAzureCredential``, ``ComputeManagementClient`` and ``NetworkManagementClient``."""
    import dask_cloudprovider.azure.azurevm as azurevm

    def poller(value: Any = None) -> SimpleNamespace:
        return SimpleNamespace(result=lambda: value, wait=lambda: None)

    def create_vm(group: str, name: str, parameters: dict[str, Any]) -> SimpleNamespace:
        cloud_init = base64.b64decode(parameters["os_profile"]["custom_data"]).decode()
        cloud.boot(name, cloud_init, {"role": _role(cloud_init), "resource_group": group, "name": name,
                                      "parameters": parameters, "cloud_init": cloud_init})
        return poller()

    def delete_vm(group: str, name: str) -> SimpleNamespace:
        cloud.terminate(name)
        return poller()

    compute = SimpleNamespace(
        virtual_machines=SimpleNamespace(begin_create_or_update=create_vm, begin_delete=delete_vm,
                                         get=lambda group, name: SimpleNamespace(name=name)),
        disks=SimpleNamespace(list_by_resource_group=lambda group: [], begin_delete=lambda *a: poller()))
    def nic(group: str, name: str) -> SimpleNamespace:
        return SimpleNamespace(name=name, ip_configurations=[SimpleNamespace(private_ip_address="127.0.0.1")])

    network = SimpleNamespace(
        subnets=SimpleNamespace(list=lambda group, vnet: [SimpleNamespace(id=f"/{vnet}/subnets/default")]),
        network_security_groups=SimpleNamespace(get=lambda group, name: SimpleNamespace(id=f"/nsg/{name}")),
        public_ip_addresses=SimpleNamespace(
            begin_create_or_update=lambda group, name, p: poller(SimpleNamespace(id=f"/ip/{name}", name=name,
                                                                                 ip_address="127.0.0.1")),
            begin_delete=lambda *a: poller()),
        network_interfaces=SimpleNamespace(
            begin_create_or_update=lambda group, name, p: poller(SimpleNamespace(id=f"/nic/{name}", name=name)),
            get=nic, begin_delete=lambda *a: poller()))
    monkeypatch.setattr(azurevm, "DefaultAzureCredential", lambda: SimpleNamespace())
    monkeypatch.setattr(azurevm, "ComputeManagementClient", lambda credential, subscription: compute)
    monkeypatch.setattr(azurevm, "NetworkManagementClient", lambda credential, subscription: network)


def fake_aws(monkeypatch: pytest.MonkeyPatch, cloud: FakeCloud) -> None:
    """AWS: aiobotocore's session, whose EC2 client runs, tags, describes and terminates instances."""
    import dask_cloudprovider.aws.ec2 as ec2

    counter = iter(range(1, 1000))

    class EC2Client:
        async def __aenter__(self) -> EC2Client:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        async def run_instances(self, **request: Any) -> dict[str, Any]:
            instance_id = f"i-{next(counter):08x}"
            ip = cloud.boot(instance_id, request["UserData"], {"role": _role(request["UserData"]),
                                                                "cloud_init": request["UserData"], **request})
            return {"Instances": [{"InstanceId": instance_id, "PublicIpAddress": ip, "PrivateIpAddress": ip}]}

        async def create_tags(self, **request: Any) -> None:
            return None

        async def describe_instances(self, **request: Any) -> dict[str, Any]:
            raise AssertionError("the instance had its IP address at once; no need to describe it")

        async def terminate_instances(self, InstanceIds: list[str], DryRun: bool = False) -> None:
            for instance_id in InstanceIds:
                cloud.terminate(instance_id)

    session = SimpleNamespace(create_client=lambda service, **kwargs: EC2Client())
    monkeypatch.setattr(ec2, "get_session", lambda: session)


def fake_gcp(monkeypatch: pytest.MonkeyPatch, cloud: FakeCloud) -> None:
    """GCP: Application Default Credentials, the Compute Engine API client and the GCE metadata probe."""
    import dask_cloudprovider.gcp.instances as instances
    import google.auth
    import googleapiclient.discovery

    def execute(value: Any) -> SimpleNamespace:
        return SimpleNamespace(execute=lambda: value)

    def insert(project: str, zone: str, body: dict[str, Any]) -> SimpleNamespace:
        cloud_init = next(i["value"] for i in body["metadata"]["items"] if i["key"] == "user-data")
        cloud.boot(body["name"], cloud_init, {"role": _role(cloud_init), "project": project, "zone": zone,
                                              "body": body, "cloud_init": cloud_init})
        return execute({"id": body["name"]})

    running = {"items": [{"status": "RUNNING", "networkInterfaces": [
        {"networkIP": "127.0.0.1", "accessConfigs": [{"natIP": "127.0.0.1"}]}]}]}
    api = SimpleNamespace(
        insert=insert, list=lambda project, zone, filter: execute(running),
        delete=lambda project, zone, instance: execute(cloud.terminate(instance)))
    monkeypatch.setattr(google.auth, "default", lambda scopes=None: (SimpleNamespace(), "fake-project"))
    monkeypatch.setattr(googleapiclient.discovery, "build", lambda *a, **k: SimpleNamespace(instances=lambda: api))
    # the probe asks the GCE metadata server whether we run on GCE; we do not, and send nothing out
    monkeypatch.setattr(instances, "is_inside_gce", lambda: False)


FAKES = {"azure": fake_azure, "aws": fake_aws, "gcp": fake_gcp}

# The provider-specific options of each recipe, and where the VM size/type shows in the VM request.
OPTIONS: dict[str, dict[str, Any]] = {
    "azure": {"location": "westeurope", "resource_group": "geoclf-rg", "vnet": "geoclf-vnet",
              "security_group": "geoclf-nsg", "public_ingress": True, "vm_size": "Standard_D4s_v5",
              "subscription_id": "00000000-0000-0000-0000-000000000000", "disk_size": 64},
    "aws": {"region": "us-west-2", "instance_type": "m6i.xlarge", "vpc": "vpc-1", "subnet_id": "subnet-1",
            "security_groups": ["sg-1"], "ami": "ami-123", "filesystem_size": 64},
    "gcp": {"projectid": "geoclf-project", "zone": "us-central1-a", "machine_type": "n2-standard-4",
            "filesystem_size": 64},
}


def machine_size(provider: str, request: dict[str, Any]) -> str:
    if provider == "azure":
        return request["parameters"]["hardware_profile"]["vm_size"]
    if provider == "aws":
        return request["InstanceType"]
    return request["body"]["machineType"].rsplit("/", 1)[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fake_cloud() -> Iterator[FakeCloud]:
    """A :class:`FakeCloud`, with Dask's TLS configuration put back afterwards."""
    import distributed  # noqa: F401  (loads its configuration defaults, which the context must see)

    # VMCluster writes its TLS settings into Dask's global configuration for good; the context puts the
    # values from before back when the test ends, so later tests do not talk TLS
    keys = ["distributed.comm.default-scheme", "distributed.comm.require-encryption",
            "distributed.comm.tls.ca-file", *(f"distributed.comm.tls.{who}.{what}" for who in
                                              ("scheduler", "worker", "client") for what in ("key", "cert"))]
    with dask.config.set({key: dask.config.get(key, None) for key in keys}):
        fake = FakeCloud()
        try:
            yield fake
        finally:
            fake.stop()


@pytest.fixture
def cloud() -> Iterator[FakeCloud]:
    with fake_cloud() as fake:
        yield fake


def write_recipe(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def cloud_recipe(tmp_path: Path, provider: str, **scaling: Any) -> Path:
    options = {**OPTIONS[provider], "scheduler_options": {"port": free_port()}}
    return write_recipe(tmp_path / f"{provider}.yaml", {
        "provider": provider, "options": options, **scaling,
        "environment": {"docker_image": "ghcr.io/dask/dask:2024.8.2-py3.11", "pip": ["geoclf==0.1.0"],
                        "env": {"AWS_REQUEST_PAYER": "requester"}}})


def _double(x: int) -> int:
    return 2 * x


@pytest.mark.parametrize("provider", ["azure", "aws", "gcp"])
def test_cloud_cluster_is_built_from_recipe(provider: str, tmp_path: Path, cloud: FakeCloud,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    FAKES[provider](monkeypatch, cloud)
    recipe = cloud_recipe(tmp_path, provider, workers=2)
    with cluster_from_recipe(recipe, quiet=True) as cluster:
        assert type(cluster).__name__ == {"azure": "AzureVMCluster", "aws": "EC2Cluster", "gcp": "GCPCluster"}[provider]
        # the recipe's options reached the cluster object...
        if provider == "azure":
            assert (cluster.location, cluster.resource_group, cluster.vm_size) == (
                "westeurope", "geoclf-rg", "Standard_D4s_v5")
        elif provider == "aws":
            assert (cluster.region, cluster.instance_type) == ("us-west-2", "m6i.xlarge")
        else:
            assert (cluster.worker_machine_type, cluster.options["zone"]) == ("n2-standard-4", "us-central1-a")
        # ...and the VM requests: one scheduler and two workers of the recipe's size, image and environment
        assert len(cloud.roles("scheduler")) == 1
        assert len(cloud.roles("worker")) == 2
        size = {"azure": "vm_size", "aws": "instance_type", "gcp": "machine_type"}[provider]
        assert [machine_size(provider, r) for r in cloud.requests] == [OPTIONS[provider][size]] * 3
        for machine in cloud.machines.values():
            assert machine["image"] == "ghcr.io/dask/dask:2024.8.2-py3.11"
            assert machine["env"]["EXTRA_PIP_PACKAGES"] == "geoclf==0.1.0"
            assert machine["env"]["GLIBC_TUNABLES"] == WORKER_GLIBC_TUNABLES
            assert machine["env"]["AWS_REQUEST_PAYER"] == "requester"
        # the cluster object is what every stage takes as its scheduler
        with dask_client(cluster) as client:
            client.wait_for_workers(2, timeout=30)
            assert client.gather(client.map(_double, range(6))) == [0, 2, 4, 6, 8, 10]
            assert client.dashboard_link
        started = set(cloud.machines)
    # closing the block deleted every VM
    assert started <= set(cloud.terminated)
    assert cloud.machines == {}


def test_adaptive_cloud_cluster_scales_from_zero(tmp_path: Path, cloud: FakeCloud,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake_aws(monkeypatch, cloud)
    recipe = cloud_recipe(tmp_path, "aws", adaptive={"minimum": 0, "maximum": 2})
    with cluster_from_recipe(recipe, quiet=True) as cluster:
        assert cloud.roles("worker") == []  # no worker VM until there is work
        assert cluster._adaptive.minimum == 0 and cluster._adaptive.maximum == 2
        with dask_client(cluster) as client:
            assert client.gather(client.map(_double, range(4))) == [0, 2, 4, 6]
        assert 1 <= len(cloud.roles("worker")) <= 2
    assert cloud.machines == {}


def test_recipe_files_in_the_repository_are_valid() -> None:
    recipes = sorted((Path(__file__).parents[1] / "recipes").glob("cluster-*.yaml"))
    assert {p.name for p in recipes} >= {"cluster-azure.yaml", "cluster-aws.yaml", "cluster-gcp.yaml"}
    for path in recipes:
        recipe = read_recipe(path)
        kwargs = recipe.cluster_kwargs()
        assert "geoclf" in kwargs["env_vars"]["EXTRA_PIP_PACKAGES"]
        assert kwargs["env_vars"]["GLIBC_TUNABLES"] == WORKER_GLIBC_TUNABLES


@pytest.mark.parametrize(("document", "message"), [
    ({"provider": "azure", "options": {"location": "westeurope", "vmsize": "Standard_D4s_v5"}},
     r"unknown option 'vmsize' for AzureVMCluster; valid options: .*\bvm_size\b"),
    ({"provider": "aws", "cluster_class": "FargateCluster", "options": {"worker_cpus": 1024}},
     r"unknown option 'worker_cpus' for FargateCluster; valid options: .*\bworker_cpu\b"),
    ({"provider": "aws", "cluster_class": "AzureVMCluster"}, r"valid classes: EC2Cluster, FargateCluster"),
    ({"provider": "openstack"}, r"unknown provider 'openstack'; valid providers: azure, aws, gcp, local, address"),
    ({"provider": "gcp", "workers": 2, "adaptive": {"maximum": 4}}, r"either workers .* or adaptive"),
    ({"provider": "gcp", "adaptive": {"minimum": 3, "maximum": 2}}, r"minimum <= maximum"),
    ({"provider": "gcp", "workers": -1}, r"workers must be a whole number"),
    ({"provider": "gcp", "options": {"n_workers": 3}},
     r"option 'n_workers' is set by the recipe itself; use 'workers'"),
    ({"provider": "gcp", "environment": {"image": "x"}}, r"unknown environment key 'image'"),
    ({"provider": "gcp", "worker": 2}, r"unknown recipe key 'worker'; valid keys: provider"),
    ({"provider": "local", "environment": {"pip": ["geoclf"]}}, r"cloud providers only"),
    ({"provider": "address", "address": "10.0.0.5:8786"}, r"needs address: tcp://HOST:PORT"),
    ({"provider": "address", "address": "tcp://10.0.0.5:8786", "workers": 3}, r"'workers' does not apply"),
])
def test_bad_recipes_fail_in_one_line(tmp_path: Path, document: dict[str, Any], message: str) -> None:
    path = write_recipe(tmp_path / "recipe.yaml", document)
    with pytest.raises(InputError, match=message) as info:
        read_recipe(path)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(str(path))


def test_unreadable_recipes(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such cluster recipe"):
        read_recipe(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("provider: [azure\n")
    with pytest.raises(InputError, match="cannot be read as a YAML cluster recipe"):
        read_recipe(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- azure\n")
    with pytest.raises(InputError, match="a YAML mapping"):
        read_recipe(tmp_path / "list.yaml")


def test_cluster_arguments_follow_kwargs_to_the_base_classes() -> None:
    from dask_cloudprovider.azure import AzureVMCluster

    valid = cluster_arguments(AzureVMCluster)
    assert {"vm_size", "resource_group"} <= valid  # AzureVMCluster's own
    assert {"docker_image", "env_vars", "n_workers", "security"} <= valid  # VMCluster's
    assert {"silence_logs", "name"} <= valid  # SpecCluster's
    assert "kwargs" not in valid and "self" not in valid


def test_address_and_local_recipes(tmp_path: Path) -> None:
    address = write_recipe(tmp_path / "address.yaml", {"provider": "address", "address": "tcp://10.0.0.5:8786"})
    with cluster_from_recipe(address, quiet=True) as scheduler:
        assert scheduler == "tcp://10.0.0.5:8786"  # a string dask_client connects to

    local = write_recipe(tmp_path / "local.yaml", {"provider": "local", "workers": 1,
                                                   "options": {"memory_limit": "1GiB"},
                                                   "environment": {"env": {"GEOCLF_TEST_VAR": "on-worker"}}})
    with cluster_from_recipe(local, quiet=True) as cluster:
        assert type(cluster).__name__ == "LocalCluster"
        with dask_client(cluster) as client:
            info = client.scheduler_info()["workers"]
            assert len(info) == 1
            assert next(iter(info.values()))["memory_limit"] == 2**30
            # worker processes are spawned with the recipe's environment and geoclf's malloc tunables
            env = client.submit(_environ, pure=False).result()
            assert env["GEOCLF_TEST_VAR"] == "on-worker"
            assert env["GLIBC_TUNABLES"] == WORKER_GLIBC_TUNABLES
    assert cluster.status.name == "closed"


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_scheduler_from_option(tmp_path: Path) -> None:
    for value in ("local", "sync", "tcp://10.0.0.5:8786", None):
        with scheduler_from_option(value) as scheduler:
            assert scheduler == value
    recipe = write_recipe(tmp_path / "address.yaml", {"provider": "address", "address": "tcp://10.0.0.5:8786"})
    with scheduler_from_option(str(recipe), quiet=True) as scheduler:
        assert scheduler == "tcp://10.0.0.5:8786"
    with pytest.raises(InputError, match="neither 'local', 'sync', a scheduler address"), \
            scheduler_from_option(str(tmp_path / "nope.yaml")):
        pass


def test_cloud_cluster_that_fails_to_configure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            cloud: FakeCloud) -> None:
    fake_azure(monkeypatch, cloud)
    # AzureVMCluster refuses a recipe without a resource group (and no Dask config naming one)
    recipe = write_recipe(tmp_path / "azure.yaml", {"provider": "azure", "options": {
        "location": "westeurope", "vnet": "v", "security_group": "s", "vm_size": "Standard_D4s_v5",
        "subscription_id": "0"}, "workers": 1})
    with pytest.raises(InputError, match="AzureVMCluster is not configured: You must configure a resource_group"), \
            cluster_from_recipe(recipe, quiet=True):
        pass
    assert cloud.requests == []


def test_json_in_recipe_module_docstring_is_a_valid_recipe(tmp_path: Path) -> None:
    import geoclf.cluster as module

    text = module.__doc__ or ""
    block = text[text.index("provider: azure"):text.index("The cloud SDKs")]
    document = yaml.safe_load(re.sub(r"^    ", "", block, flags=re.M))
    document.pop("address")  # shown for provider: address only
    document.pop("workers")  # the docstring shows both scaling styles
    path = write_recipe(tmp_path / "doc.yaml", document)
    assert read_recipe(path).adaptive == {"minimum": 0, "maximum": 8}
