"""batchrun: push large volumes of prompts through Claude."""
