"""Naive DCP consolidation: torch's own helper, which loads the whole checkpoint into memory."""

import sys
import warnings

from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

warnings.simplefilter("ignore")
dcp_to_torch_save(sys.argv[1], sys.argv[2])
