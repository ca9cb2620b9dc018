"""What `mockehr up` prints once every service is ready."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from mockehr.demo import DemoUser
from mockehr.stack import SERVICES, Stack


def print_summary(console: Console, stack: Stack, users: list[DemoUser], seconds: float) -> None:
    data = stack.data_dir.resolve()
    services = Table("service", "URL", title=f"mockehr is up ({seconds:.1f} s)", title_justify="left")
    for service in SERVICES:
        services.add_row(service.name, stack.url(service.name))
    console.print(services)
    console.print(f"CA certificate  {data / 'ca.pem'}   (curl --cacert …, SSL_CERT_FILE=…)", highlight=False)
    console.print(
        f"admin token     {(data / 'admin-token').read_text().strip()}   (also in {data / 'admin-token'})",
        highlight=False,
    )
    console.print(f"database        {stack.db_url.split('@')[-1]}", highlight=False)
    console.print(f"logs            {data / 'logs'}", highlight=False)
    if users:
        # One line per user, not a table: ids are long, and scripts grep these lines.
        console.print("demo users:", highlight=False)
        for user in users:
            patients = " ".join(f"Patient/{p}" for p in user.patients[:3])
            console.print(
                f"  {user.fhir_user}  login {user.username}  password {user.password}  patients {patients}",
                highlight=False,
                soft_wrap=True,
            )
    console.print("Ctrl-C stops every service.")
