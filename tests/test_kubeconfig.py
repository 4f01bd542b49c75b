"""`k8s-ws kubeconfig` and `diagnose --context` without a server (interface §7, issue 11): reading
and merging kubeconfigs as kubectl does, which clusters are routed, how each is rewritten, what is
printed, which files are (never) written, and the exit statuses. The certificates here are
placeholders: nothing parses them but the PEM framing; tests/test_e2e_kubeconfig.py uses real ones
with real clients.
"""

from __future__ import annotations

import base64
import os
import stat

import pytest
import yaml

from helpers import KUBECONFIG_TOKEN, TOKEN, secret_forms
from kubews import cli
from kubews import kubeconfig as kc
from mitmdump_harness import ROOT


def pem(label: str) -> str:
    """A placeholder certificate: PEM framing around a body that names it."""
    body = base64.b64encode(label.encode()).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"


MITM_CA, RANCHER_CA, FILE_CA, ROOT_CA = pem("mitmproxy"), pem("rancher"), pem("file"), pem("public root")
RANCHER = "https://rancher.example.com/k8s/clusters/c-m-abc"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def config_text(clusters=(), users=(), contexts=(), current=None, **rest) -> str:
    document = {"apiVersion": "v1", "kind": "Config", **rest,
                "clusters": [{"name": n, "cluster": c} for n, c in clusters],
                "users": [{"name": n, "user": u} for n, u in users],
                "contexts": [{"name": n, "context": c} for n, c in contexts]}
    if current:
        document["current-context"] = current
    return yaml.safe_dump(document, sort_keys=False)


def parse(text: str, file: str = "/kube/config") -> kc.KubeConfig:
    return kc.parse_kubeconfig(text, file)


def route(server: str = RANCHER, name: str = "rancher", contexts=("rancher",), **cluster) -> kc.Route:
    named = kc.Named("cluster", name, {"name": name, "cluster": {"server": server, **cluster}}, kc.Where("/kube/config", 4))
    return kc.Route(named, tuple(contexts), kc.https_server(server))


def no_token_in(*texts: str) -> None:
    for token in (TOKEN, KUBECONFIG_TOKEN):
        for form in secret_forms(token):
            assert not any(form in text for text in texts)


# --- reading and merging ------------------------------------------------------------------------


TYPICAL = config_text(
    clusters=[("rancher", {"server": RANCHER, "certificate-authority-data": b64(RANCHER_CA)}),
              ("kind", {"server": "https://127.0.0.1:6443", "certificate-authority": "ca/kind.pem"})],
    users=[("me", {"token": TOKEN}), ("cert", {"client-certificate": "me.crt", "client-key": "/abs/me.key"})],
    contexts=[("rancher", {"cluster": "rancher", "user": "me"}), ("kind", {"cluster": "kind", "user": "cert", "namespace": "dev"})],
    current="rancher",
    preferences={},
)


def test_parse_keeps_entries_whole_with_their_lines():
    config = parse(TYPICAL)
    assert [c.name for c in config.clusters] == ["rancher", "kind"]
    assert config.current_context == "rancher"
    assert config.rest == {"apiVersion": "v1", "kind": "Config", "preferences": {}}
    lines = TYPICAL.splitlines()
    for entry in (*config.clusters, *config.users, *config.contexts):
        assert lines[entry.where.line - 1] == f"- name: {entry.name}"
    assert config.find("users", "me").body == {"token": TOKEN}


@pytest.mark.parametrize(
    "kind, body, expected",
    [
        pytest.param("cluster", {"certificate-authority": "ca.pem"}, {"certificate-authority": "/kube/ca.pem"}, id="cluster CA"),
        pytest.param("cluster", {"certificate-authority": "/etc/ca.pem"}, {"certificate-authority": "/etc/ca.pem"}, id="absolute stays"),
        pytest.param("user", {"client-certificate": "a.crt", "client-key": "../a.key"},
                     {"client-certificate": "/kube/a.crt", "client-key": "/kube/../a.key"}, id="client certificate and key"),
        pytest.param("user", {"tokenFile": "tok"}, {"tokenFile": "/kube/tok"}, id="tokenFile"),
        pytest.param("user", {"exec": {"command": "./bin/login", "args": ["x"]}}, {"exec": {"command": "/kube/./bin/login", "args": ["x"]}},
                     id="exec command given as a path"),
        pytest.param("user", {"exec": {"command": "rancher"}}, {"exec": {"command": "rancher"}}, id="exec command looked up in PATH"),
        pytest.param("context", {"cluster": "x"}, {"cluster": "x"}, id="contexts hold no file"),
    ],
)
def test_relative_references_are_made_absolute_against_their_file(kind, body, expected):
    # As client-go's ResolveLocalPaths: the new file works wherever it is written.
    plural = {"cluster": "clusters", "user": "users", "context": "contexts"}[kind]
    config = parse(yaml.safe_dump({plural: [{"name": "x", kind: body}]}))
    assert config.entries(plural)[0].body == expected


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param("- a\n- b\n", "/kube/config:1: not a kubeconfig", id="a list"),
        pytest.param("clusters: {a: 1}\n", "/kube/config: clusters must be a list", id="clusters not a list"),
        pytest.param("clusters:\n- cluster: {}\n", "/kube/config:2: clusters: an entry without a name", id="no name"),
        pytest.param("users:\n- name: u\n  user: [1]\n", "/kube/config:2: user 'u': 'user' must be a mapping", id="body not a mapping"),
        pytest.param("contexts:\n- name: c\n- name: d\n- name: c\n", "/kube/config:4: context 'c': duplicate name (also at line 2)",
                     id="duplicate name"),
        pytest.param("current-context: [a]\n", "current-context must be a string", id="current-context not a string"),
        # YAML's own message would quote the line, token and all
        pytest.param(f"users:\n- name: u\n  user:\n    token: {TOKEN}: x\n", "/kube/config:4:", id="YAML error on a token's line"),
    ],
)
def test_what_cannot_be_read_says_where_and_never_shows_a_token(text, message):
    with pytest.raises(kc.KubeconfigError) as error:
        parse(text)
    assert message in str(error.value)
    no_token_in(str(error.value))


def test_an_empty_file_is_an_empty_config():
    assert parse("") == kc.KubeConfig(files=("/kube/config",))


def test_merge_is_kubectls_first_file_wins():
    first = parse(config_text(clusters=[("a", {"server": "https://one"})], contexts=[("c", {"cluster": "a"})],
                              preferences={"colors": True}), "/one")
    second = parse(config_text(clusters=[("a", {"server": "https://two"}), ("b", {"server": "https://b"})],
                               contexts=[("d", {"cluster": "b"})], current="d", preferences={"colors": False}, extensions=[]), "/two")
    third = parse(config_text(current="c"), "/three")
    merged = kc.merge([first, second, third])
    assert merged.files == ("/one", "/two", "/three")
    assert [(c.name, c.body["server"], c.where.file) for c in merged.clusters] == [("a", "https://one", "/one"), ("b", "https://b", "/two")]
    assert [c.name for c in merged.contexts] == ["c", "d"]
    assert merged.current_context == "d"  # the first file that sets it, not the first file
    assert merged.rest == {"apiVersion": "v1", "kind": "Config", "preferences": {"colors": True}, "extensions": []}


@pytest.mark.parametrize(
    "explicit, environ, expected",
    [
        pytest.param("in.yaml", {"KUBECONFIG": "/a"}, (["in.yaml"], True), id="IN wins"),
        pytest.param(None, {"KUBECONFIG": f"/a{os.pathsep}{os.pathsep}/b{os.pathsep}/a"}, (["/a", "/b"], False),
                     id="KUBECONFIG list, empty names and duplicates dropped"),
        pytest.param(None, {"KUBECONFIG": ""}, (["/home/me/.kube/config"], True), id="empty KUBECONFIG"),
        pytest.param(None, {}, (["/home/me/.kube/config"], True), id="default"),
    ],
)
def test_which_files_are_read(explicit, environ, expected):
    assert kc.kubeconfig_paths(explicit, environ, "/home/me") == expected


def test_dump_reads_back_as_the_same_document_in_the_same_order():
    config = parse(TYPICAL)
    dumped = yaml.safe_load(kc.dump(config))
    order = ["apiVersion", "kind", "preferences", "clusters", "users", "contexts", "current-context"]
    assert list(dumped) == list(yaml.safe_load(TYPICAL)) == order
    original = yaml.safe_load(TYPICAL)
    original["clusters"][1]["cluster"]["certificate-authority"] = "/kube/ca/kind.pem"  # made absolute
    original["users"][1]["user"]["client-certificate"] = "/kube/me.crt"
    assert dumped == original


# --- which clusters go through k8s-ws -----------------------------------------------------------


@pytest.mark.parametrize(
    "url, rancher, server",
    [
        pytest.param(RANCHER, True, ("rancher.example.com", 443, "/k8s/clusters/c-m-abc"), id="clusters"),
        pytest.param("https://r.test:8443/k8s/proxy/local/", True, ("r.test", 8443, "/k8s/proxy/local/"), id="proxy, port, slash"),
        pytest.param("HTTPS://R.test/k8s/clusters/c", True, ("r.test", 443, "/k8s/clusters/c"), id="upper-case scheme"),
        pytest.param("https://r.test/k8s/clusters/c/api", False, ("r.test", 443, "/k8s/clusters/c/api"), id="a deeper path"),
        pytest.param("https://r.test/k8s/clusters/", False, ("r.test", 443, "/k8s/clusters/"), id="no cluster id"),
        pytest.param("https://10.0.0.1:6443", False, ("10.0.0.1", 6443, ""), id="a plain apiserver"),
        pytest.param("https://10.0.0.1:6443/", False, ("10.0.0.1", 6443, ""), id="a plain apiserver, slash"),
        pytest.param("http://r.test/k8s/clusters/c", False, None, id="http"),
        pytest.param("https://r.test/k8s/clusters/c?x=1", False, None, id="a query"),
        pytest.param("https://u:p@r.test/k8s/clusters/c", False, None, id="credentials in the URL"),
        pytest.param("https://r.test:99999/k8s/clusters/c", False, None, id="a bad port"),
        pytest.param(None, False, None, id="no server"),
    ],
)
def test_rancher_servers(url, rancher, server):
    expected = kc.Server(*server) if server else None
    assert kc.https_server(url) == expected
    assert kc.rancher_server(url) == (expected if rancher else None)


ROUTING = parse(config_text(
    clusters=[("r1", {"server": RANCHER}), ("r2", {"server": "https://rancher.example.com/k8s/proxy/local"}),
              ("kind", {"server": "https://127.0.0.1:6443"}), ("plain", {"server": "http://127.0.0.1:8080"})],
    contexts=[("a", {"cluster": "r1"}), ("b", {"cluster": "r1"}), ("k", {"cluster": "kind"}), ("p", {"cluster": "plain"}),
              ("lost", {"cluster": "nowhere"})],
))


@pytest.mark.parametrize(
    "names, expected",
    [
        pytest.param((), [("r1", ("a", "b")), ("r2", ())], id="every Rancher cluster"),
        pytest.param(("k",), [("kind", ("k",))], id="a named context, any https server"),
        pytest.param(("b", "a", "b"), [("r1", ("a", "b"))], id="two contexts of one cluster"),
    ],
)
def test_select_routes(names, expected):
    assert [(r.cluster.name, r.contexts) for r in kc.select_routes(ROUTING, names)] == expected


@pytest.mark.parametrize(
    "names, message",
    [
        pytest.param(("nope",), "/kube/config: no context 'nope' (contexts: a, b, k, p, lost)", id="unknown context"),
        pytest.param(("lost",), "context 'lost': its cluster 'nowhere' is defined nowhere", id="context without its cluster"),
        pytest.param(("p",), "context 'p': cluster 'plain' has no https:// server", id="http server"),
    ],
)
def test_select_routes_refuses(names, message):
    with pytest.raises(kc.KubeconfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        kc.select_routes(ROUTING, names)


def test_nothing_to_route():
    assert kc.select_routes(parse(config_text(clusters=[("kind", {"server": "https://127.0.0.1:6443"})]))) == ()


# --- trust --------------------------------------------------------------------------------------


def reader(files: dict[str, str]):
    def read(path: str) -> str:
        if path not in files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return files[path]
    return read


@pytest.mark.parametrize(
    "cluster, trust",
    [
        pytest.param({"certificate-authority-data": b64(RANCHER_CA)}, kc.ClusterTrust((RANCHER_CA,), "certificate-authority-data"),
                     id="data"),
        pytest.param({"certificate-authority-data": "\n".join(b64(RANCHER_CA + FILE_CA)[i:i + 64] for i in range(0, 400, 64))},
                     kc.ClusterTrust((RANCHER_CA, FILE_CA), "certificate-authority-data"), id="data folded, two certificates"),
        pytest.param({"certificate-authority": "/ca.pem"}, kc.ClusterTrust((FILE_CA,), "certificate-authority /ca.pem"), id="file"),
        pytest.param({"certificate-authority": "/ca.pem", "certificate-authority-data": b64(RANCHER_CA)},
                     kc.ClusterTrust((RANCHER_CA,), "certificate-authority-data"), id="both: data, as client-go"),
        pytest.param({}, kc.ClusterTrust((), "the public roots (it had no CA)"), id="none"),
        pytest.param({"insecure-skip-tls-verify": True, "certificate-authority": "/ca.pem"},
                     kc.ClusterTrust((), "insecure-skip-tls-verify (nothing verified)", insecure=True), id="insecure"),
        pytest.param({"insecure-skip-tls-verify": False}, kc.ClusterTrust((), "the public roots (it had no CA)"), id="insecure false"),
    ],
)
def test_cluster_trust(cluster, trust):
    assert kc.cluster_trust(route(**cluster), reader({"/ca.pem": "# comment\n" + FILE_CA})) == trust


@pytest.mark.parametrize(
    "cluster, message",
    [
        pytest.param({"certificate-authority-data": "not base64!"}, "certificate-authority-data is not base64 of a PEM file",
                     id="not base64"),
        pytest.param({"certificate-authority-data": b64("no pem")}, "certificate-authority-data holds no PEM certificate", id="no PEM"),
        pytest.param({"certificate-authority": "/missing.pem"}, "cannot read certificate-authority /missing.pem: No such file or directory",
                     id="missing file"),
        pytest.param({"certificate-authority": "/key.pem"}, "certificate-authority /key.pem holds no PEM certificate", id="a key only"),
    ],
)
def test_cluster_trust_errors_name_the_cluster_its_contexts_and_file(cluster, message):
    with pytest.raises(kc.KubeconfigError) as error:
        kc.cluster_trust(route(**cluster), reader({"/key.pem": "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"}))
    assert str(error.value) == f"cluster 'rancher' (context rancher) in /kube/config:4: {message}"


def test_pem_certificates_leave_keys_out():
    text = "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n" + MITM_CA.replace("\n", "\r\n") + "trailer"
    assert kc.pem_certificates(text) == (MITM_CA,)


# --- rewriting ----------------------------------------------------------------------------------


def ca_of(cluster: kc.Named) -> str:
    return base64.b64decode(cluster.body["certificate-authority-data"]).decode()


REGULAR, REVERSE = kc.Regular("http://127.0.0.1:8080"), kc.Reverse("https://127.0.0.1:8443")


@pytest.mark.parametrize(
    "cluster, mode, expected_server, expected_ca",
    [
        pytest.param({"certificate-authority-data": b64(RANCHER_CA)}, REGULAR, RANCHER, MITM_CA + RANCHER_CA, id="regular, data"),
        pytest.param({"certificate-authority": "/ca.pem"}, REGULAR, RANCHER, MITM_CA + FILE_CA, id="regular, file"),
        pytest.param({}, REGULAR, RANCHER, MITM_CA + ROOT_CA, id="regular, public roots"),
        pytest.param({"certificate-authority-data": b64(RANCHER_CA)}, REVERSE, "https://127.0.0.1:8443/k8s/clusters/c-m-abc", MITM_CA,
                     id="reverse, data"),
        pytest.param({"certificate-authority": "/ca.pem"}, REVERSE, "https://127.0.0.1:8443/k8s/clusters/c-m-abc", MITM_CA,
                     id="reverse, file"),
    ],
)
def test_rewrite_cluster(cluster, mode, expected_server, expected_ca):
    original = route(**cluster, **{"tls-server-name": "rancher.example.com", "extensions": [{"name": "x"}]})
    trust = kc.cluster_trust(original, reader({"/ca.pem": FILE_CA}))
    rewritten = kc.rewrite_cluster(original, trust, mode, (MITM_CA,), (ROOT_CA,))
    body = rewritten.body
    assert (rewritten.name, rewritten.where, rewritten.item["name"]) == ("rancher", original.cluster.where, "rancher")
    assert body["server"] == expected_server
    assert ca_of(rewritten) == expected_ca
    assert "certificate-authority" not in body  # both set is an error for client-go and Headlamp
    assert "insecure-skip-tls-verify" not in body
    assert body.get("proxy-url") == (mode.proxy_url if mode is REGULAR else None)
    assert (body["tls-server-name"], body["extensions"]) == ("rancher.example.com", [{"name": "x"}])
    assert original.cluster.body.get("proxy-url") is None  # the input's entry is not touched


@pytest.mark.parametrize("mode", [REGULAR, REVERSE], ids=["regular", "reverse"])
def test_a_cluster_that_skipped_verification_keeps_skipping_and_gets_no_ca(mode):
    original = route(**{"insecure-skip-tls-verify": True})
    body = kc.rewrite_cluster(original, kc.cluster_trust(original, reader({})), mode, (MITM_CA,), (ROOT_CA,)).body
    assert body["insecure-skip-tls-verify"] is True
    assert "certificate-authority-data" not in body


def test_reverse_keeps_the_path_as_written():
    original = route("https://r.test:9443/k8s/proxy/local/")
    body = kc.rewrite_cluster(original, kc.ClusterTrust((), "none"), REVERSE, (MITM_CA,), ()).body
    assert body["server"] == "https://127.0.0.1:8443/k8s/proxy/local/"


@pytest.mark.parametrize("mode", [REGULAR, REVERSE], ids=["regular", "reverse"])
def test_a_cluster_with_a_proxy_already_is_refused_without_showing_it(mode):
    original = route(**{"proxy-url": "http://user:hunter2@corp:3128"})
    with pytest.raises(kc.KubeconfigError) as error:
        kc.rewrite_cluster(original, kc.ClusterTrust((), "none"), mode, (MITM_CA,), ())
    assert "cluster 'rancher' (context rancher) in /kube/config:4: it already goes through proxy-url" in str(error.value)
    assert "hunter2" not in str(error.value) and "corp" not in str(error.value)


def test_dump_adds_no_list_the_input_did_not_have():
    assert yaml.safe_load(kc.dump(parse("clusters: []\ncurrent-context: x\n"))) == {"clusters": [], "current-context": "x"}


def test_summary_in_reverse_mode_with_a_cluster_that_skips_verification():
    loose = route(**{"insecure-skip-tls-verify": True})
    rewritten = kc.rewrite_cluster(loose, kc.ClusterTrust((), "", insecure=True), REVERSE, (MITM_CA,), ())
    text = kc.summary(kc.Written(
        inputs=("/kube/config",), output="/out dir/k.yaml", mode=REVERSE, routes=(loose,), trusts=(kc.ClusterTrust((), "", True),),
        rewritten=(rewritten,), untouched=(), upstream_ca=None, upstream_certificates=0, command=("mitmdump", "-s", "a b.py"),
    ))
    assert text.splitlines() == [
        "read: /kube/config",
        "wrote: /out dir/k.yaml (mode 0600: it holds the input's credentials)",
        "reverse mode: server https://127.0.0.1:8443 with the cluster's path",
        f"  cluster 'rancher' (context rancher) in /kube/config:4: {RANCHER} -> https://127.0.0.1:8443/k8s/clusters/c-m-abc; "
        "trusts no CA (insecure-skip-tls-verify kept, as the input had it)",
        "no upstream CA to write: the clusters skip verification",
        "run the proxy:",
        "  mitmdump -s 'a b.py'",
        "then: KUBECONFIG='/out dir/k.yaml' kubectl, headlamp, ...",
    ]


def test_rewrite_replaces_only_the_routed_clusters():
    config = parse(TYPICAL)
    [routed] = kc.select_routes(config)
    new = kc.rewrite(config, [kc.rewrite_cluster(routed, kc.ClusterTrust((RANCHER_CA,), "data"), REGULAR, (MITM_CA,), ())])
    assert [c.name for c in new.clusters] == ["rancher", "kind"]
    assert new.clusters[0].body["proxy-url"] == "http://127.0.0.1:8080"
    assert new.clusters[1] == config.clusters[1]
    assert (new.users, new.contexts, new.current_context, new.rest) == (config.users, config.contexts, config.current_context, config.rest)


@pytest.mark.parametrize(
    "servers, upstream",
    [
        pytest.param([RANCHER, "https://RANCHER.example.com:443/k8s/proxy/local"], "https://rancher.example.com", id="one host"),
        pytest.param(["https://r.test:8443/k8s/clusters/a"], "https://r.test:8443", id="a port"),
    ],
)
def test_reverse_mode_has_one_upstream(servers, upstream):
    assert kc.check_one_upstream([route(s, name=str(i)) for i, s in enumerate(servers)]) == upstream


def test_reverse_mode_refuses_clusters_on_two_hosts():
    with pytest.raises(kc.KubeconfigError) as error:
        kc.check_one_upstream([route(RANCHER, name="a"), route("https://r.test:8443/k8s/clusters/b", name="b"),
                               route(RANCHER, name="c")])
    message = str(error.value)
    assert "one upstream per mitmdump listener" in message
    assert "https://rancher.example.com: clusters 'a', 'c'; https://r.test:8443: cluster 'b'" in message
    assert "--context" in message


@pytest.mark.parametrize(
    "trusts, expected",
    [
        pytest.param([kc.ClusterTrust((RANCHER_CA,), ""), kc.ClusterTrust((RANCHER_CA, FILE_CA), "")], (RANCHER_CA, FILE_CA),
                     id="own CAs once each"),
        pytest.param([kc.ClusterTrust((RANCHER_CA,), ""), kc.ClusterTrust((), "")], (RANCHER_CA, ROOT_CA),
                     id="public roots beside a private CA"),
        pytest.param([kc.ClusterTrust((), "", insecure=True)], (), id="nothing for an insecure cluster"),
    ],
)
def test_upstream_bundle(trusts, expected):
    assert kc.upstream_bundle(trusts, (ROOT_CA,)) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("http://127.0.0.1:8080", "http://127.0.0.1:8080", id="default"),
        pytest.param("HTTP://proxy.corp:3128/", "http://proxy.corp:3128", id="slash and case"),
        pytest.param("https://proxy.corp", "https://proxy.corp", id="https"),
        pytest.param("socks5://127.0.0.1:1080", "expected http://HOST[:PORT] or https://HOST[:PORT]", id="socks"),
        pytest.param("127.0.0.1:8080", "expected http://", id="no scheme"),
        pytest.param("http://127.0.0.1:8080/x", "no path, query or fragment", id="a path"),
        pytest.param("http://u:p@127.0.0.1:8080", "must not hold credentials", id="credentials"),
        pytest.param("http://127.0.0.1:123456", "--proxy http://127.0.0.1:123456: Port out of range", id="bad port"),
    ],
)
def test_proxy_url(text, expected):
    if expected.startswith("http"):
        assert kc.proxy_url(text) == expected
    else:
        with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace("]", r"\]")):
            kc.proxy_url(text)


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("https://127.0.0.1:8443", "https://127.0.0.1:8443", id="https"),
        pytest.param("http://127.0.0.1:8443", "send no token to an http:// server", id="http"),
        pytest.param("https://127.0.0.1:8443/k8s", "no path", id="a path"),
    ],
)
def test_reverse_url(text, expected):
    if expected.startswith("https"):
        assert kc.reverse_url(text) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            kc.reverse_url(text)


@pytest.mark.parametrize(
    "mode, upstream, ca, confdir, insecure, expected",
    [
        pytest.param(REGULAR, None, "/up.pem", None, False,
                     "--listen-host 127.0.0.1 --listen-port 8080 --set ssl_verify_upstream_trusted_ca=/up.pem", id="regular"),
        pytest.param(kc.Regular("http://proxy.corp:3128"), None, None, "/conf", False, "--listen-port 3128 --set confdir=/conf",
                     id="a proxy elsewhere, own confdir"),
        pytest.param(kc.Reverse("https://localhost"), "https://r.test:8443", "/up.pem", None, True,
                     "--mode reverse:https://r.test:8443 --listen-host localhost --listen-port 443 "
                     "--set ssl_verify_upstream_trusted_ca=/up.pem --set ssl_insecure=true", id="reverse"),
    ],
)
def test_mitmdump_command(mode, upstream, ca, confdir, insecure, expected):
    command = kc.mitmdump_command(mode, upstream, "/k8s-ws/addon/k8s_ws.py", ca, confdir, insecure)
    assert kc.shell_line(command) == f"mitmdump -s /k8s-ws/addon/k8s_ws.py {expected}"


@pytest.mark.parametrize(
    "out, expected",
    [
        pytest.param("/k/k8s-ws.yaml", "/k/k8s-ws-upstream-ca.pem", id="yaml"),
        pytest.param("/k/config", "/k/config-upstream-ca.pem", id="no suffix"),
        pytest.param("/k/.kc", "/k/.kc-upstream-ca.pem", id="dot file"),
    ],
)
def test_default_upstream_ca_path(out, expected):
    assert kc.default_upstream_ca_path(out) == expected


# --- diagnose --context (pure) -------------------------------------------------------------------


ACCESS = parse(config_text(
    clusters=[("data", {"server": RANCHER, "certificate-authority-data": b64(RANCHER_CA)}),
              ("file", {"server": RANCHER, "certificate-authority": "ca.pem"}),
              ("loose", {"server": RANCHER, "insecure-skip-tls-verify": True})],
    users=[("token", {"token": TOKEN}), ("file", {"tokenFile": "tok"}), ("both", {"token": TOKEN, "tokenFile": "/t"}),
           ("certs", {"client-certificate": "/c"})],
    contexts=[("a", {"cluster": "data", "user": "token", "namespace": "ns"}), ("b", {"cluster": "file", "user": "file"}),
              ("c", {"cluster": "loose", "user": "certs"}), ("d", {"cluster": "data"}), ("e", {"cluster": "data", "user": "both"}),
              ("ghost", {"cluster": "data", "user": "nobody"})],
    current="b",
), "/kube/config")


@pytest.mark.parametrize(
    "name, expected, credential, trust",
    [
        pytest.param("a", dict(namespace="ns", user="token", token=TOKEN, ca_data=RANCHER_CA), "user 'token' token",
                     "certificate-authority-data", id="token and CA data"),
        pytest.param("b", dict(user="file", token_file="/kube/tok", ca_file="/kube/ca.pem"), "user 'file' tokenFile /kube/tok",
                     "certificate-authority /kube/ca.pem", id="tokenFile and CA file"),
        pytest.param(None, dict(user="file", token_file="/kube/tok", ca_file="/kube/ca.pem"), "user 'file' tokenFile /kube/tok",
                     "certificate-authority /kube/ca.pem", id="the current context"),
        pytest.param("c", dict(user="certs", insecure=True), "none (user 'certs' has neither token nor tokenFile)",
                     "insecure-skip-tls-verify (not verified)", id="no token, insecure"),
        pytest.param("d", dict(user=None, ca_data=RANCHER_CA), "none (the context names no user)", "certificate-authority-data",
                     id="no user"),
        pytest.param("e", dict(user="both", token=TOKEN, token_file="/t", ca_data=RANCHER_CA), "user 'both' tokenFile /t",
                     "certificate-authority-data", id="tokenFile wins, as in client-go"),
    ],
)
def test_context_access(name, expected, credential, trust):
    access = kc.context_access(ACCESS, name)
    values = dict(namespace="default", token=None, token_file=None, ca_data=None, ca_file=None, insecure=False) | expected
    assert {k: getattr(access, k) for k in values} == values
    assert access.server == RANCHER and access.context == (name or "b")
    assert (access.credential, access.trust) == (credential, trust)
    no_token_in(repr(access), access.credential)


@pytest.mark.parametrize(
    "config, name, message",
    [
        pytest.param(ACCESS, "nope", "no context 'nope'", id="unknown context"),
        pytest.param(ACCESS, "ghost", r"/kube/config:\d+: context 'ghost': its user 'nobody' is defined nowhere", id="unknown user"),
        pytest.param(parse(config_text()), None, "/kube/config: no current-context: name one with --context", id="no current context"),
        pytest.param(parse(config_text(clusters=[("x", {})], contexts=[("x", {"cluster": "x"})])), "x", "cluster 'x' has no server",
                     id="no server"),
    ],
)
def test_context_access_refuses(config, name, message):
    with pytest.raises(kc.KubeconfigError, match=message):
        kc.context_access(config, name)


@pytest.mark.parametrize(
    "path, expected",
    [
        pytest.param(None, f"{RANCHER}/api/v1/namespaces/ns/pods?watch=1", id="default: a watch in the context's namespace"),
        pytest.param("/api/v1/namespaces/x/pods/p/log?follow=true", f"{RANCHER}/api/v1/namespaces/x/pods/p/log?follow=true", id="a path"),
    ],
)
def test_context_url(path, expected):
    assert kc.context_url(kc.context_access(ACCESS, "a"), path) == expected


def test_context_url_takes_a_path_only():
    with pytest.raises(ValueError, match="a path on the cluster's server"):
        kc.context_url(kc.context_access(ACCESS, "a"), "https://elsewhere/api/v1/pods")


# --- the command: files, output, exit statuses ------------------------------------------------------


@pytest.fixture
def files(tmp_path, monkeypatch):
    """An input kubeconfig (mode 0640) beside a CA file, and mitmproxy's CA in a confdir of its own."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "ca.pem").write_text(FILE_CA)
    source = tmp_path / "in.yaml"
    source.write_text(config_text(
        clusters=[("rancher", {"server": RANCHER, "certificate-authority-data": b64(RANCHER_CA)}),
                  ("local", {"server": "https://rancher.example.com/k8s/clusters/local", "certificate-authority": "ca.pem"}),
                  ("kind", {"server": "https://127.0.0.1:6443", "certificate-authority": "/etc/kind.pem"})],
        users=[("me", {"token": TOKEN}), ("kc", {"token": KUBECONFIG_TOKEN})],
        contexts=[("rancher", {"cluster": "rancher", "user": "me"}), ("local", {"cluster": "local", "user": "kc"}),
                  ("kind", {"cluster": "kind", "user": "me"})],
        current="rancher",
    ))
    source.chmod(0o640)
    confdir = tmp_path / "confdir"
    confdir.mkdir()
    (confdir / "mitmproxy-ca-cert.pem").write_text(MITM_CA)
    return tmp_path


def run(capsys, *argv: str):
    status = cli.main(["kubeconfig", *argv])
    out, err = capsys.readouterr()
    no_token_in(out, err)
    return status, out, err


def run_in(capsys, files, *extra: str):
    mitmproxy_ca = str(files / "confdir" / "mitmproxy-ca-cert.pem")
    return run(capsys, str(files / "in.yaml"), "-o", str(files / "out.yaml"), "--mitmproxy-ca", mitmproxy_ca, *extra)


def test_writes_a_new_private_file_and_says_what_to_run(capsys, files):
    before = (files / "in.yaml").read_bytes(), stat.S_IMODE((files / "in.yaml").stat().st_mode)
    old_umask = os.umask(0)  # the mode comes from the file's creation, not from the umask
    try:
        status, out, err = run_in(capsys, files)
    finally:
        os.umask(old_umask)
    assert (status, err) == (0, "")
    assert stat.S_IMODE((files / "out.yaml").stat().st_mode) == 0o600
    assert ((files / "in.yaml").read_bytes(), stat.S_IMODE((files / "in.yaml").stat().st_mode)) == before
    written = yaml.safe_load((files / "out.yaml").read_text())
    clusters = {c["name"]: c["cluster"] for c in written["clusters"]}
    assert clusters["rancher"] == {"server": RANCHER, "certificate-authority-data": b64(MITM_CA + RANCHER_CA),
                                   "proxy-url": "http://127.0.0.1:8080"}
    assert clusters["local"] == {"server": "https://rancher.example.com/k8s/clusters/local", "proxy-url": "http://127.0.0.1:8080",
                                 "certificate-authority-data": b64(MITM_CA + FILE_CA)}
    assert clusters["kind"] == {"server": "https://127.0.0.1:6443", "certificate-authority": "/etc/kind.pem"}
    assert written["users"] == yaml.safe_load((files / "in.yaml").read_text())["users"]  # tokens as they were
    assert written["current-context"] == "rancher"
    upstream = files / "out-upstream-ca.pem"
    assert upstream.read_text() == RANCHER_CA + FILE_CA
    assert f"  mitmdump -s {ROOT / 'addon' / 'k8s_ws.py'} --listen-host 127.0.0.1 --listen-port 8080 --set confdir={files / 'confdir'} " \
           f"--set ssl_verify_upstream_trusted_ca={upstream}\n" in out
    assert f"cluster 'rancher' (context rancher) in {files / 'in.yaml'}:" in out
    assert "left as they were: 'kind'" in out


def test_replaces_an_existing_output_with_a_new_file(capsys, files):
    out = files / "out.yaml"
    out.write_text("old")
    out.chmod(0o644)
    old_inode = out.stat().st_ino
    assert run_in(capsys, files)[0] == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.stat().st_ino != old_inode
    assert [p.name for p in files.iterdir() if p.name.endswith(".tmp")] == []


def test_reverse_mode(capsys, files):
    status, out, _ = run_in(capsys, files, "--reverse", "https://127.0.0.1:8443", "--upstream-ca-out", str(files / "up.pem"))
    assert status == 0
    clusters = {c["name"]: c["cluster"] for c in yaml.safe_load((files / "out.yaml").read_text())["clusters"]}
    assert clusters["rancher"] == {"server": "https://127.0.0.1:8443/k8s/clusters/c-m-abc", "certificate-authority-data": b64(MITM_CA)}
    assert (files / "up.pem").read_text() == RANCHER_CA + FILE_CA
    assert "--mode reverse:https://rancher.example.com --listen-host 127.0.0.1 --listen-port 8443" in out


def test_public_roots_come_from_certifi(capsys, files):
    import certifi

    (files / "in.yaml").write_text(config_text(clusters=[("public", {"server": RANCHER})]))
    status, _, _ = run_in(capsys, files)
    assert status == 0
    [public] = yaml.safe_load((files / "out.yaml").read_text())["clusters"]
    roots = kc.pem_certificates(open(certifi.where()).read())
    assert len(roots) > 10
    assert base64.b64decode(public["cluster"]["certificate-authority-data"]).decode() == MITM_CA + "".join(roots)
    # mitmproxy's own default, written out because ssl_verify_upstream_trusted_ca replaces it
    assert (files / "out-upstream-ca.pem").read_text() == "".join(roots)


def test_only_certificates_of_mitmproxys_ca_file_go_in(capsys, files):
    # mitmproxy-ca.pem holds the CA's private key too: it must never reach a kubeconfig.
    key = "-----BEGIN PRIVATE KEY-----\nTUlUTS1LRVk=\n-----END PRIVATE KEY-----\n"
    (files / "confdir" / "mitmproxy-ca.pem").write_text(key + MITM_CA)
    status, _, _ = run_in(capsys, files, "--mitmproxy-ca", str(files / "confdir" / "mitmproxy-ca.pem"))
    assert status == 0
    written = (files / "out.yaml").read_text()
    assert "TUlUTS1LRVk" not in written and "PRIVATE" not in base64.b64decode(
        yaml.safe_load(written)["clusters"][0]["cluster"]["certificate-authority-data"]).decode()


def test_a_mitmproxy_ca_file_without_certificate_exits_1(capsys, files):
    (files / "confdir" / "mitmproxy-ca-cert.pem").write_text("nothing")
    status, _, err = run_in(capsys, files)
    assert status == 1 and "mitmproxy-ca-cert.pem: holds no PEM certificate" in err


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(kc.os, "replace", fail)
    with pytest.raises(OSError):
        kc.write_new_file(str(tmp_path / "out.yaml"), b"x", 0o600)
    assert list(tmp_path.iterdir()) == []


def test_reads_a_kubeconfig_list_as_kubectl(capsys, files, monkeypatch):
    second = files / "second.yaml"
    second.write_text(config_text(clusters=[("rancher", {"server": "https://elsewhere/k8s/clusters/x"}),
                                            ("other", {"server": "https://r.test/k8s/proxy/c-2",
                                                       "certificate-authority-data": b64(FILE_CA)})]))
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(files / "missing.yaml"), str(files / "in.yaml"), str(second)]))
    status, out, _ = run(capsys, "-o", str(files / "out.yaml"), "--mitmproxy-ca", str(files / "confdir" / "mitmproxy-ca-cert.pem"))
    assert status == 0
    clusters = {c["name"]: c["cluster"] for c in yaml.safe_load((files / "out.yaml").read_text())["clusters"]}
    assert list(clusters) == ["rancher", "local", "kind", "other"]
    assert clusters["rancher"]["server"] == RANCHER  # the first file's
    assert clusters["other"]["proxy-url"] == "http://127.0.0.1:8080"
    assert f"read: {files / 'in.yaml'}, {second}" in out


def test_the_default_mitmproxy_ca_is_in_home(capsys, files):
    status, _, err = run(capsys, str(files / "in.yaml"), "-o", str(files / "out.yaml"))
    assert status == 1
    assert f"{files / 'home' / '.mitmproxy' / 'mitmproxy-ca-cert.pem'}: mitmproxy's CA does not exist yet: run mitmdump once" in err
    assert not (files / "out.yaml").exists()
    (files / "home" / ".mitmproxy").mkdir(parents=True)
    (files / "home" / ".mitmproxy" / "mitmproxy-ca-cert.pem").write_text(MITM_CA)
    status, out, _ = run(capsys, str(files / "in.yaml"), "-o", str(files / "out.yaml"))
    assert status == 0 and "confdir" not in out  # mitmdump's default confdir


@pytest.mark.parametrize(
    "out, extra, message",
    [
        pytest.param("in.yaml", (), "-o {files}/in.yaml is the input kubeconfig", id="OUT is IN"),
        pytest.param("link.yaml", (), "-o {files}/link.yaml is the input kubeconfig", id="OUT links to IN"),
        pytest.param("hard.yaml", (), "-o {files}/hard.yaml is the input kubeconfig", id="OUT is IN's inode"),
        pytest.param("out.yaml", ("--upstream-ca-out", "{files}/confdir/mitmproxy-ca-cert.pem"), "is mitmproxy's CA",
                     id="CA out is mitmproxy's"),
        pytest.param("out.yaml", ("--upstream-ca-out", "{files}/in.yaml"), "--upstream-ca-out {files}/in.yaml is the input",
                     id="CA out is IN"),
        pytest.param("out.yaml", ("--upstream-ca-out", "{files}/out.yaml"), "-o and --upstream-ca-out are the same file",
                     id="CA out is OUT"),
    ],
)
def test_never_writes_its_input(capsys, files, out, extra, message):
    (files / "link.yaml").symlink_to(files / "in.yaml")
    os.link(files / "in.yaml", files / "hard.yaml")
    before = (files / "in.yaml").read_bytes()
    status, _, err = run_in(capsys, files, "-o", str(files / out), *(e.format(files=files) for e in extra))
    assert status == 2 and message.format(files=files) in err
    assert (files / "in.yaml").read_bytes() == before
    assert not (files / "out.yaml").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        pytest.param(["in.yaml"], "the following arguments are required: -o/--output", id="no OUT"),
        pytest.param(["-o", "x", "--proxy", "http://a", "--reverse", "https://b"], "not allowed with argument", id="two modes"),
        pytest.param(["-o", "x", "--proxy", "a:1"], "argument --proxy: --proxy a:1: expected http://", id="bad proxy"),
        pytest.param(["-o", "x", "--reverse", "http://a"], "use https://", id="http reverse"),
    ],
)
def test_bad_usage_exits_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["kubeconfig", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, extra, message",
    [
        pytest.param(None, ("--context", "nope"), "no context 'nope' (contexts: rancher, local, kind)", id="unknown context"),
        pytest.param(config_text(clusters=[("kind", {"server": "https://127.0.0.1:6443"})]), (),
                     "nothing to route in {files}/in.yaml: no cluster has a Rancher server", id="nothing to route"),
        pytest.param(f"users:\n- name: u\n  user: {{token: {TOKEN}}}\n  - broken\n", (), "{files}/in.yaml:4:3: not YAML", id="not YAML"),
        pytest.param(None, ("--context", "kind"), "cluster 'kind' (context kind) in {files}/in.yaml:{kind_line}: cannot read "
                     "certificate-authority /etc/kind.pem: No such file or directory", id="a CA file that is not there"),
        pytest.param(None, ("--reverse", "https://127.0.0.1:8443", "--context", "rancher", "--context", "kind"),
                     "one upstream per mitmdump listener", id="reverse mode, two hosts"),
    ],
)
def test_what_cannot_be_routed_exits_1_and_writes_nothing(capsys, files, content, extra, message):
    if content is not None:
        (files / "in.yaml").write_text(content)
    lines = (files / "in.yaml").read_text().splitlines()
    kind_line = lines.index("- name: kind") + 1 if "- name: kind" in lines else None  # the first: the cluster
    status, out, err = run_in(capsys, files, *extra)
    assert (status, out) == (1, "")
    assert message.format(files=files, kind_line=kind_line) in err
    assert not (files / "out.yaml").exists() and not (files / "out-upstream-ca.pem").exists()


def test_a_missing_input_exits_1(capsys, files):
    status, _, err = run(capsys, str(files / "nope.yaml"), "-o", str(files / "out.yaml"))
    assert status == 1 and f"{files / 'nope.yaml'}: no such file" in err


def test_an_input_that_is_not_text_exits_1(capsys, files):
    (files / "in.yaml").write_bytes(b"\xff\xfe\x00")
    status, _, err = run_in(capsys, files)
    assert status == 1 and f"{files / 'in.yaml'}: cannot read it: UnicodeDecodeError" in err


def test_a_kubeconfig_list_of_missing_files_exits_1(capsys, files, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(files / "a.yaml") + os.pathsep + str(files / "b.yaml"))
    status, _, err = run(capsys, "-o", str(files / "out.yaml"))
    assert status == 1 and f"none of the files in $KUBECONFIG exists: {files / 'a.yaml'}, {files / 'b.yaml'}" in err


def test_an_unwritable_output_exits_1(capsys, files):
    status, _, err = run_in(capsys, files, "-o", str(files / "no-such-dir" / "out.yaml"))
    assert status == 1 and f"cannot write {files / 'no-such-dir' / 'out.yaml'}: No such file or directory" in err


# --- diagnose --context: what is refused before any probe -------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        pytest.param(["https://x/api/v1/pods", "--kubeconfig", "k"], "--kubeconfig goes with --context NAME", id="kubeconfig alone"),
        pytest.param([], "give the URL to probe, or --context NAME", id="no URL, no context"),
        pytest.param(["--context", "nope", "--kubeconfig", "{files}/in.yaml"], "no context 'nope'", id="unknown context"),
        pytest.param(["--context", "rancher", "--kubeconfig", "{files}/nope.yaml"], "{files}/nope.yaml: no such file", id="no kubeconfig"),
        pytest.param(["https://elsewhere/api/v1/pods", "--context", "rancher", "--kubeconfig", "{files}/in.yaml"],
                     "a path on the cluster's server", id="a URL with a context"),
        pytest.param(["--context", "bad-ca", "--kubeconfig", "{files}/in.yaml"],
                     "context 'bad-ca': its CA (certificate-authority-data) does not load", id="a CA that does not load"),
        pytest.param(["--context", "bad-token", "--kubeconfig", "{files}/in.yaml", "--insecure"],
                     "context 'bad-token': user 'bad': token: the token contains control characters", id="a token that cannot be sent"),
        pytest.param(["--context", "token-file", "--kubeconfig", "{files}/in.yaml", "--insecure"], "cannot read {files}/no-token",
                     id="a tokenFile not there"),
    ],
)
def test_diagnose_context_refusals_exit_2(capsys, files, argv, message):
    source = files / "in.yaml"
    text = source.read_text().replace("clusters:\n", "clusters:\n- name: bad\n  cluster:\n    server: https://r.test/k8s/clusters/c\n"
                                      f"    certificate-authority-data: {b64(pem('broken'))}\n", 1)
    text = text.replace("users:\n", "users:\n- name: bad\n  user:\n    token: \"a\\nb\"\n- name: tf\n  user:\n    tokenFile: no-token\n", 1)
    text = text.replace("contexts:\n", "contexts:\n- name: bad-ca\n  context: {cluster: bad, user: me}\n"
                        "- name: bad-token\n  context: {cluster: rancher, user: bad}\n"
                        "- name: token-file\n  context: {cluster: rancher, user: tf}\n", 1)
    source.write_text(text)
    status = cli.main(["diagnose", *(a.format(files=files) for a in argv)])
    out, err = capsys.readouterr()
    no_token_in(out, err)
    assert status == 2 and message.format(files=files) in err
