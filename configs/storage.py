"""Object-store connection settings (endpoint and the *names* of the secret variables)."""

from typing import Literal

from pydantic import Field, SecretStr

from imagefleet.configs.base import StrictModel


class S3Config(StrictModel):
    """How to reach an S3-compatible store. Secrets are never stored here, only where to find them."""

    endpoint_url: str = ""
    """S3 endpoint, e.g. http://127.0.0.1:20080. Empty: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the AWS profile's
    `services` section, else AWS's own."""
    region: str = ""
    """Region used for request signing ('' = AWS_REGION, AWS_DEFAULT_REGION, the AWS profile's region, else
    us-east-1)."""
    access_key_env: str = "AWS_ACCESS_KEY_ID"
    """Environment variable holding the access key id."""
    secret_key_env: str = "AWS_SECRET_ACCESS_KEY"
    """Environment variable holding the secret access key."""
    secret_file: str = ""
    """Optional file with two lines `access_key=...` and `secret_key=...` (wins over the env vars)."""
    session_token_env: str = "AWS_SESSION_TOKEN"
    """Environment variable holding a session token that goes with the keys (temporary credentials)."""
    profile: str = ""
    """AWS profile to use when no keys are set ('' = AWS_PROFILE, else boto3's default chain: SSO, web identity
    (EKS IRSA), container and instance roles)."""
    max_attempts: int = Field(default=8, ge=1, le=20)
    """Attempts per request, with backoff, for 5xx / SlowDown / connection errors."""
    connect_timeout_s: float = Field(default=5.0, gt=0)
    """Connect timeout per request."""
    retry_budget_s: float = Field(default=120.0, ge=0)
    """After the client's own retries, keep retrying outages (connection errors, 5xx, SlowDown) this long."""


class StoreSpec(StrictModel):
    """Resolved connection handed to actors: endpoint plus credentials (never logged or dumped)."""

    kind: Literal["local", "s3"]
    """Where objects live: a local folder or an S3 bucket."""
    endpoint_url: str = ""
    """S3 endpoint; empty for AWS."""
    region: str = "us-east-1"
    """Signing region."""
    access_key: SecretStr = SecretStr("")
    """Access key id (secret: excluded from dumps)."""
    secret_key: SecretStr = SecretStr("")
    """Secret access key (secret: excluded from dumps)."""
    session_token: SecretStr = SecretStr("")
    """Session token of temporary keys ('' = none; secret)."""
    credentials: Literal["keys", "chain"] = "keys"
    """keys: the ones above; chain: each process asks boto3's default credential chain (a profile, SSO, web
    identity, a container or instance role), which refreshes temporary credentials itself."""
    profile: str = ""
    """The AWS profile the chain starts from ('' = the default)."""
    max_attempts: int = 8
    """Attempts per request with backoff."""
    connect_timeout_s: float = 5.0
    """Connect timeout per request."""
    retry_budget_s: float = 120.0
    """How long to ride out an outage of the store before a write counts as failed."""
