"""Background jobs of the ota app, run by the worker: conversion, stuck validations."""
