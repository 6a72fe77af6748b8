"""End-to-end tests of the test Hub server with the real huggingface_hub client (and transformers)."""

import os
import subprocess
import sys

import pytest
import torch
from hub_server import TEST_USER, HubServer
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import save_file

# Registers the `hub_server` / `hub_env` fixtures (importing them by name trips ruff's F811 on each test).
pytest_plugins = ["hub_server"]
# The client's own LFS PUT (huggingface_hub/lfs.py) passes `data=` to httpx2, which warns; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

REPO = f"{TEST_USER}/demo"


def _upload_text(api: HfApi, text: str, path: str = "notes.txt", **kwargs):
    return api.upload_file(path_or_fileobj=text.encode(), path_in_repo=path, repo_id=REPO, **kwargs)


def test_whoami_and_create_repo(hub_server):
    api = HfApi()  # no endpoint/token given: the fixture made the defaults point at the server
    assert api.endpoint == hub_server.endpoint
    assert api.whoami()["name"] == TEST_USER

    url = api.create_repo(REPO)
    assert url.repo_id == REPO and url.endpoint == hub_server.endpoint
    with pytest.raises(HfHubHTTPError) as info:
        api.create_repo(REPO)
    assert info.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    assert api.create_repo("no-namespace").repo_id == f"{TEST_USER}/no-namespace"

    # Like the Hub, a new repo has an initial commit on main holding .gitattributes.
    info = api.model_info(REPO)
    assert len(info.sha) == 40 and not info.private
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]
    assert ("POST", "/api/repos/create", 409) in hub_server.request_log


def test_upload_folder_uses_lfs_for_safetensors(hub_server, tmp_path):
    api = HfApi()
    api.create_repo(REPO)
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    weights = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    save_file(weights, folder / "model.safetensors")
    commit = api.upload_folder(folder_path=folder, repo_id=REPO, commit_message="add files")
    assert commit.oid == api.model_info(REPO).sha

    # The safetensors file went the LFS batch -> PUT -> verify way; the text file inline in the commit.
    assert hub_server.requests("POST", "/info/lfs/objects/batch")
    assert [r[2] for r in hub_server.requests("PUT", "/_lfs/")] == [200]
    assert hub_server.requests("POST", "/info/lfs/objects/verify")[0][2] == 200
    tree = {f.path: f for f in api.list_repo_tree(REPO, recursive=True)}
    assert tree["model.safetensors"].lfs is not None and tree["notes.txt"].lfs is None
    sha256 = tree["model.safetensors"].lfs.sha256

    path = hf_hub_download(REPO, "model.safetensors")
    assert path.startswith(str(hub_server.env["HF_HUB_CACHE"]))  # the per-test cache, not ~/.cache
    assert open(path, "rb").read() == (folder / "model.safetensors").read_bytes()
    assert f"/blobs/{sha256}" in os.path.realpath(path)  # LFS etag = sha256
    meta = get_hf_file_metadata(hf_hub_url(REPO, "model.safetensors"))
    assert (meta.commit_hash, meta.etag, meta.size) == (commit.oid, sha256, len(open(path, "rb").read()))
    assert open(hf_hub_download(REPO, "notes.txt", revision="main")).read() == "hello"

    # Re-uploading unchanged files is a no-op (preupload returns the remote oids, the client skips them).
    again = api.upload_folder(folder_path=folder, repo_id=REPO, commit_message="same files")
    assert again.oid == commit.oid


def test_download_by_commit_hash_returns_that_commit(hub_server):
    api = HfApi()
    api.create_repo(REPO)
    first = _upload_text(api, "version 1").oid
    second = _upload_text(api, "version 2").oid
    assert first != second and len(first) == len(second) == 40

    assert open(hf_hub_download(REPO, "notes.txt", revision=first)).read() == "version 1"
    assert open(hf_hub_download(REPO, "notes.txt")).read() == "version 2"
    assert open(hf_hub_download(REPO, "notes.txt", revision=second)).read() == "version 2"
    assert open(hf_hub_download(REPO, "notes.txt", revision=first[:7])).read() == "version 1"
    assert api.model_info(REPO, revision=first).sha == first
    assert [c.commit_id for c in api.list_repo_commits(REPO)][:2] == [second, first]


def test_snapshot_download_list_files_and_delete(hub_server):
    api = HfApi()
    api.create_repo(REPO)
    _upload_text(api, "a")
    _upload_text(api, "b", path="sub/dir/b.txt")
    assert sorted(api.list_repo_files(REPO)) == [".gitattributes", "notes.txt", "sub/dir/b.txt"]
    top = {f.path: type(f).__name__ for f in api.list_repo_tree(REPO)}
    assert top == {".gitattributes": "RepoFile", "notes.txt": "RepoFile", "sub": "RepoFolder"}
    assert [f.path for f in api.list_repo_tree(REPO, path_in_repo="sub/dir")] == ["sub/dir/b.txt"]

    folder = snapshot_download(REPO)
    assert open(f"{folder}/sub/dir/b.txt").read() == "b"
    assert open(f"{folder}/notes.txt").read() == "a"

    api.delete_file("notes.txt", repo_id=REPO)
    assert sorted(api.list_repo_files(REPO)) == [".gitattributes", "sub/dir/b.txt"]
    with pytest.raises(EntryNotFoundError):
        api.delete_file("notes.txt", repo_id=REPO)


def test_branches_and_tags(hub_server):
    api = HfApi()
    api.create_repo(REPO)
    first = _upload_text(api, "on main").oid
    api.create_tag(REPO, tag="v1.0", revision=first)
    api.create_branch(REPO, branch="feature/x")  # a "/" in the name: sent URL-encoded
    api.create_branch(REPO, branch="feature/x", exist_ok=True)
    _upload_text(api, "on branch", revision="feature/x")
    _upload_text(api, "main moved on")

    assert open(hf_hub_download(REPO, "notes.txt", revision="v1.0")).read() == "on main"
    assert open(hf_hub_download(REPO, "notes.txt", revision="feature/x")).read() == "on branch"
    assert open(hf_hub_download(REPO, "notes.txt")).read() == "main moved on"

    refs = api.list_repo_refs(REPO)
    assert sorted(b.name for b in refs.branches) == ["feature/x", "main"]
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1.0", "refs/tags/v1.0", first)]
    with pytest.raises(HfHubHTTPError) as info:
        api.create_tag(REPO, tag="v1.0")
    assert info.value.response.status_code == 409


def test_private_repo_needs_token(hub_server, tmp_path):
    api = HfApi()
    api.create_repo(REPO, private=True)
    _upload_text(api, "secret")
    assert api.model_info(REPO).private
    assert open(hf_hub_download(REPO, "notes.txt")).read() == "secret"

    with pytest.raises(RepositoryNotFoundError):
        api.model_info(REPO, token=False)
    with pytest.raises(RepositoryNotFoundError):
        # A cache of its own: otherwise the client falls back to the copy cached above.
        hf_hub_download(REPO, "notes.txt", token=False, cache_dir=tmp_path / "anonymous")
    assert hub_server.request_log[-1][2] == 401


def test_write_without_valid_token_is_refused(hub_server):
    api = HfApi()
    api.create_repo(REPO)
    writes = (
        lambda token: api.create_repo(f"{TEST_USER}/other", token=token),
        lambda token: _upload_text(api, "x", token=token),
        lambda token: api.create_branch(REPO, branch="dev", token=token),
    )
    for token in (False, "hf_wrong"):  # no token at all, or a wrong one
        for write in writes:
            with pytest.raises(HfHubHTTPError) as info:
                write(token)
            # Exactly HfHubHTTPError (not RepositoryNotFoundError): the 401 says the credentials are invalid.
            assert type(info.value) is HfHubHTTPError
            assert info.value.response.status_code == 401
            assert "Invalid credentials" in str(info.value)
    assert api.list_repo_files(REPO) == [".gitattributes"]


def test_missing_file_repo_and_revision(hub_server):
    api = HfApi()
    api.create_repo(REPO)
    with pytest.raises(EntryNotFoundError) as info:
        hf_hub_download(REPO, "missing.txt")
    assert type(info.value) is RemoteEntryNotFoundError
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{TEST_USER}/missing-repo", "notes.txt")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(f"{TEST_USER}/missing-repo")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, ".gitattributes", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, ".gitattributes", revision="0" * 40)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")
    assert api.file_exists(REPO, ".gitattributes") and not api.file_exists(REPO, "missing.txt")
    assert not api.repo_exists(f"{TEST_USER}/missing-repo")


def test_subprocess_sees_the_server(hub_env):
    code = "from huggingface_hub import whoami, constants; print(whoami()['name'], constants.ENDPOINT)"
    cmd = [sys.executable, "-c", code]
    out = subprocess.run(cmd, env=hub_env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [TEST_USER, hub_env["HF_ENDPOINT"]]


def test_transformers_push_to_hub_and_from_pretrained(hub_server):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    model.push_to_hub("tiny-gpt2")  # no namespace: create_repo resolves it to the token's user
    repo_id = f"{TEST_USER}/tiny-gpt2"
    assert {"config.json", "model.safetensors", "README.md"} <= set(HfApi().list_repo_files(repo_id))

    loaded = transformers.GPT2LMHeadModel.from_pretrained(repo_id)
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert not [r for r in hub_server.request_log if r[2] >= 500]


def test_server_standalone_without_fixture():
    with HubServer(token="t", user="u") as hub:
        api = HfApi(endpoint=hub.endpoint, token="t")
        api.create_repo("u/x")
        assert api.list_repo_files("u/x") == [".gitattributes"]
    assert hub.request_log[0][:2] == ("POST", "/api/repos/create")
