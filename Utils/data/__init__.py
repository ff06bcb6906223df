"""Data in: raw interaction logs turned into the dataset format (prepareData.py). The splits and
graphs themselves live in DataHandler.py."""
