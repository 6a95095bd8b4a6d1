//! Herald's integration tests: one binary, the real `herald` executable started
//! per test on 127.0.0.1:0 with a fresh data directory and a fresh database
//! (SQLite by default; PostgreSQL when `TEST_DATABASE_URL` is set).

mod helpers;

mod access;
mod admin;
mod app_settings;
mod breakers;
mod brokers;
mod changes;
mod cli;
mod cloudevents;
mod cluster;
mod config;
mod console;
mod console_charts;
mod console_log;
mod content;
mod data_dir;
mod delivery;
mod faults;
mod gitserver;
mod history;
mod hooks;
mod hostile_git;
mod hostile_http;
mod hostile_listen;
mod hostile_pull;
mod https_git;
mod https_webhooks;
mod import_docora;
mod lfs;
mod lfsserver;
mod lifecycle;
mod listen;
mod listen_pull;
mod operations;
mod policy;
mod property;
mod pull;
mod receiver;
mod replay;
mod replay_quotas;
mod repositories;
mod scan_queue;
mod secrets;
mod slow_clients;
mod store;
mod submodules;
mod telemetry;
mod tenants;
mod tree_paths;
mod upkeep;
mod validation;
mod window;
