"""A second script for the end-to-end tests' mitmdump: says, in a file, that the proxy is
listening and on which port (the tests start it on port 0). Not part of the product."""

import json
import os

from mitmproxy import ctx


class Ready:
    def load(self, loader):
        loader.add_option("test_ready_file", str, "", "where to write the listen addresses once running")

    def running(self):
        addresses = ctx.master.addons.get("proxyserver").listen_addrs()
        temporary = ctx.options.test_ready_file + ".tmp"
        with open(temporary, "w") as f:
            json.dump([list(a[:2]) for a in addresses], f)
        os.replace(temporary, ctx.options.test_ready_file)


addons = [Ready()]
