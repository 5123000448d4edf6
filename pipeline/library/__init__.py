"""The library of trained models: records, model cards, downloads, the Hub, e-mail."""
