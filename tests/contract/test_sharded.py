"""The format contract for shard indexes, over shards of several formats."""

from ckptkit.testing import FormatContract


class TestSharded(FormatContract):
    format_name = "sharded"
    # The index carries no checksum, and the large tensor sits in a safetensors shard, which has
    # none either: `ckptkit verify --manifest` finds a changed data byte.
    detects_flipped_data = False
