"""``pretrained="imagenet"`` for the named RDNets: timm's hub file (``naver-ai/rdnet_*.nv_in1k``, one
``pytorch_model.bin`` in the authors' key names) downloaded from a loopback server that answers as the HF hub does
(a redirect carrying the file's SHA256 as ``X-Linked-Etag``, then the bytes) into a temporary torch hub cache; the
hash checks of every ImageNet download."""
import hashlib
import io
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from segdense.backbones import rdnet_custom, rdnet_tiny
from segdense.backbones import weights as weights_mod
from segdense.backbones.rdnet_weights import IMAGENET_HUB_IDS
from segdense.errors import CheckpointError, ConfigError

from test_convert import SMALL_RDNET, authors_hub_spelling

REPO = "naver-ai/rdnet_tiny.nv_in1k"
CACHED = "rdnet_tiny.nv_in1k.bin"


class _Hub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Answer)
        self.routes: dict[str, tuple[int, dict, bytes]] = {}
        self.requests: list[str] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def publish(self, repo: str, body: bytes, sha256: str | None = "") -> None:
        """``repo``'s pytorch_model.bin as the HF hub serves an LFS file: ``resolve/main/...`` redirects to the
        storage, naming the file's SHA256 (``sha256``; its true one by default, none if None) in X-Linked-Etag."""
        sha256 = hashlib.sha256(body).hexdigest() if sha256 == "" else sha256
        storage = f"/storage/{hashlib.sha256(repo.encode()).hexdigest()}"
        linked = {"X-Linked-Etag": f'"{sha256}"'} if sha256 else {}
        self.routes[f"/{repo}/resolve/main/pytorch_model.bin"] = (302, {
            "Location": self.base + storage, "ETag": '"0f3d8c6a1b2e4f5a6b7c8d9e0f1a2b3c4d5e6f70"', **linked,
            "X-Linked-Size": str(len(body)), "X-Repo-Commit": "c720d1a" + "0" * 33}, b"")
        self.routes[storage] = (200, {"ETag": '"5d41402abc4b2a76b9719d911017c592"'}, body)  # the storage's own etag


class _Answer(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        status, headers, body = self.server.routes.get(self.path, (404, {}, b"Entry not found"))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A loopback HF hub (HF_ENDPOINT) and an empty torch hub cache (TORCH_HOME)."""
    server = _Hub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def cache_dir(tmp_path):
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def timm_tiny():
    """timm's rdnet_tiny (1000 classes) and its file as the hub holds it: an OrderedDict in the authors' names."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("rdnet_tiny", pretrained=False).eval()
    buffer = io.BytesIO()
    torch.save(OrderedDict(authors_hub_spelling(model.state_dict())), buffer)
    return model, buffer.getvalue()


def test_imagenet_downloads_timms_file_checks_it_and_loads_it(hub, timm_tiny, tmp_path):
    model, body = timm_tiny
    hub.publish(REPO, body)
    net = rdnet_tiny(pretrained="imagenet").eval()
    assert hub.requests == [f"/{REPO}/resolve/main/pytorch_model.bin", hub.requests[1]]
    assert (cache_dir(tmp_path) / CACHED).read_bytes() == body
    assert [p.name for p in cache_dir(tmp_path).iterdir()] == [CACHED]
    theirs = model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in net.state_dict().items())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(list(net.forward_features(x).values())[-1], model.forward_features(x))
    hub.routes.clear()  # the second time the cached copy is used: no request
    again = rdnet_tiny(pretrained="imagenet")
    assert len(hub.requests) == 2 and torch.equal(again.stem[0].weight, theirs["stem.0.weight"])


def test_a_file_that_does_not_match_the_published_sha256_is_refused_and_not_kept(hub, tmp_path):
    body = b"a truncated or altered download"
    published = hashlib.sha256(b"the file the hub holds").hexdigest()
    hub.publish(REPO, body, sha256=published)
    with pytest.raises(CheckpointError) as error:
        rdnet_tiny(pretrained="imagenet")
    message = str(error.value)
    assert f"{hub.base}/{REPO}/resolve/main/pytorch_model.bin" in message
    assert hashlib.sha256(body).hexdigest() in message and published in message and "not kept" in message
    assert list(cache_dir(tmp_path).iterdir()) == []


def test_a_file_served_without_a_sha256_is_refused_and_not_kept(hub, tmp_path):
    hub.publish(REPO, b"weights", sha256=None)
    with pytest.raises(CheckpointError, match="publishes no SHA256 for it.*pretrained=PATH"):
        rdnet_tiny(pretrained="imagenet")
    assert list(cache_dir(tmp_path).iterdir()) == []


def test_a_torchvision_download_is_checked_against_the_hash_prefix_in_its_name(hub, monkeypatch, tmp_path):
    name = weights_mod.IMAGENET_URLS["densenet121"].rsplit("/", 1)[1]  # densenet121-a639ec97.pth
    hub.routes[f"/models/{name}"] = (200, {}, b"not torchvision's file")
    monkeypatch.setitem(weights_mod.IMAGENET_URLS, "densenet121", f"{hub.base}/models/{name}")
    with pytest.raises(CheckpointError, match=r"SHA256 is [0-9a-f]{64}, but its name says a639ec97"):
        weights_mod.download_imagenet_weights("densenet121")
    assert list(cache_dir(tmp_path).iterdir()) == []


def test_imagenet_for_a_custom_rdnet_is_refused_with_the_named_variants():
    with pytest.raises(ConfigError, match="pretrained='imagenet' needs a named RDNet: rdnet_tiny, rdnet_small, "
                                          "rdnet_base, rdnet_large"):
        rdnet_custom(**SMALL_RDNET, pretrained="imagenet")


def test_the_hub_repositories_are_timms():
    rdnet = pytest.importorskip("timm.models.rdnet")
    assert IMAGENET_HUB_IDS == {name: rdnet.default_cfgs[name].cfgs["nv_in1k"].hf_hub_id
                                for name in ("rdnet_tiny", "rdnet_small", "rdnet_base", "rdnet_large")}
