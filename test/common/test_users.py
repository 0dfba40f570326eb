"""The unprivileged users the tests run programs as (stasis_ua, stasis_ub),
created on first use. Shared by test/daemon, test/store and test/cluster
(ci/cluster.sh creates the same users for hand-run clusters)."""
import pwd
import subprocess

USERS = ("stasis_ua", "stasis_ub")


def ensure_users(users=USERS):
    for user in users:
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
                           check=True)
