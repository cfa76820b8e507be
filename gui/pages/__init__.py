"""The app's pages: Data, Model, Train, Evaluate, Inspect, Export."""
