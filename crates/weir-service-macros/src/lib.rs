//! `#[weir_service::service]`: from one `impl` block, the server side
//! (`ServiceContract`), a typed client (`{Type}Client`) and the contract.
//!
//! ```ignore
//! #[weir_service::service(name = "greeter", version = "1.0.0")]
//! impl Greeter {
//!     #[weir(idempotent)]
//!     async fn hello(&self, ctx: Ctx, req: HelloRequest) -> Result<HelloReply, Problem> { … }
//! }
//! ```
//!
//! `events(Placed = "orders.placed", …)` in the attribute adds event types
//! to the contract. Exported methods are the `async fn`s taking `(&self, ctx, request)` and
//! returning `Result<Response, Problem>`; `#[weir(skip)]` keeps one out.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{
    Expr, ExprLit, FnArg, GenericArgument, ImplItem, ItemImpl, Lit, Meta, PathArguments,
    ReturnType, Token, Type,
};

struct Method {
    name: syn::Ident,
    req: Type,
    resp: Type,
    idempotent: bool,
}

#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr.into(), item) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn lit_str(e: &Expr) -> syn::Result<String> {
    match e {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.value()),
        other => Err(syn::Error::new_spanned(other, "expected a string literal")),
    }
}

fn ok_type(ret: &ReturnType) -> Option<Type> {
    let ReturnType::Type(_, ty) = ret else {
        return None;
    };
    let Type::Path(p) = &**ty else { return None };
    let seg = p.path.segments.last()?;
    if seg.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &seg.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    }
}

fn expand(
    attr: proc_macro2::TokenStream,
    item: TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    let args = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    let (mut name, mut version, mut description) = (None, None, String::new());
    let mut events: Vec<(syn::Path, String)> = Vec::new();
    for a in &args {
        if let Meta::List(l) = a
            && l.path.is_ident("events")
        {
            let pairs = Punctuated::<syn::MetaNameValue, Token![,]>::parse_terminated
                .parse2(l.tokens.clone())?;
            for p in pairs {
                events.push((p.path.clone(), lit_str(&p.value)?));
            }
            continue;
        }
        let Meta::NameValue(nv) = a else {
            return Err(syn::Error::new_spanned(
                a,
                "expected `key = \"value\"` or `events(Type = \"subject\")`",
            ));
        };
        let v = lit_str(&nv.value)?;
        if nv.path.is_ident("name") {
            name = Some(v);
        } else if nv.path.is_ident("version") {
            version = Some(v);
        } else if nv.path.is_ident("description") {
            description = v;
        } else {
            return Err(syn::Error::new_spanned(
                &nv.path,
                "unknown key (name, version, description)",
            ));
        }
    }
    let name =
        name.ok_or_else(|| syn::Error::new(Span::call_site(), "`name = \"…\"` is required"))?;
    let version = version.unwrap_or_else(|| "0.1.0".to_owned());

    let mut imp: ItemImpl = syn::parse(item)?;
    let self_ty = imp.self_ty.clone();
    let Type::Path(tp) = &*self_ty else {
        return Err(syn::Error::new_spanned(&self_ty, "expected a type name"));
    };
    let ty_ident = tp
        .path
        .segments
        .last()
        .map(|s| s.ident.clone())
        .ok_or_else(|| syn::Error::new_spanned(&self_ty, "expected a type name"))?;
    let client_ident = format_ident!("{}Client", ty_ident);

    let mut methods = Vec::new();
    for it in &mut imp.items {
        let ImplItem::Fn(f) = it else { continue };
        let mut idempotent = false;
        let mut skip = false;
        let mut err = None;
        f.attrs.retain(|a| {
            if !a.path().is_ident("weir") {
                return true;
            }
            let r = a.parse_nested_meta(|m| {
                if m.path.is_ident("idempotent") {
                    idempotent = true;
                    Ok(())
                } else if m.path.is_ident("skip") {
                    skip = true;
                    Ok(())
                } else {
                    Err(m.error("expected `idempotent` or `skip`"))
                }
            });
            if let Err(e) = r {
                err = Some(e);
            }
            false
        });
        if let Some(e) = err {
            return Err(e);
        }
        if skip || f.sig.asyncness.is_none() {
            continue;
        }
        let inputs: Vec<&FnArg> = f.sig.inputs.iter().collect();
        if inputs.len() != 3 || !matches!(inputs[0], FnArg::Receiver(_)) {
            return Err(syn::Error::new_spanned(
                &f.sig,
                "service methods take (&self, ctx: Ctx, request: T); mark others #[weir(skip)]",
            ));
        }
        let FnArg::Typed(req) = inputs[2] else {
            return Err(syn::Error::new_spanned(inputs[2], "expected `request: T`"));
        };
        let resp = ok_type(&f.sig.output).ok_or_else(|| {
            syn::Error::new_spanned(&f.sig.output, "service methods return Result<T, Problem>")
        })?;
        methods.push(Method {
            name: f.sig.ident.clone(),
            req: (*req.ty).clone(),
            resp,
            idempotent,
        });
    }

    let contract_methods = methods.iter().map(|m| {
        let (n, req, resp, idem) = (m.name.to_string(), &m.req, &m.resp, m.idempotent);
        quote! { .method::<#req, #resp>(#n, #idem) }
    });
    let contract_events = events.iter().map(|(ty, subject)| {
        quote! { .event::<#ty>(#subject) }
    });
    let mounts = methods.iter().map(|m| {
        let (ident, n, req, resp) = (&m.name, m.name.to_string(), &m.req, &m.resp);
        quote! {
            let builder = {
                let svc = ::std::sync::Arc::clone(&self);
                builder.endpoint_with(
                    #n,
                    ::std::option::Option::None,
                    ::std::collections::BTreeMap::new(),
                    ::weir_service::contract::typed_handler::<#req, #resp, _, _>(
                        ::weir_service::contract::schema_of::<#req>(),
                        move |ctx, req| {
                            let svc = ::std::sync::Arc::clone(&svc);
                            async move { svc.#ident(ctx, req).await }
                        },
                    ),
                )
            };
        }
    });
    let client_methods = methods.iter().map(|m| {
        let (ident, req, resp, idem) = (&m.name, &m.req, &m.resp, m.idempotent);
        let subject = format!("{name}.{}", m.name);
        let doc = format!(
            "Calls `{subject}`{}.",
            if idem { " (idempotent: retried)" } else { "" }
        );
        quote! {
            #[doc = #doc]
            pub async fn #ident(&self, ctx: &::weir_service::Ctx, req: #req)
                -> ::std::result::Result<#resp, ::weir_service::ServiceError>
            {
                self.client.call(ctx, #subject, &req, #idem).await
            }
        }
    });
    let client_doc = format!("Typed client of the `{name}` service.");

    Ok(quote! {
        #imp

        impl ::weir_service::ServiceContract for #self_ty {
            const NAME: &'static str = #name;
            const VERSION: &'static str = #version;
            const DESCRIPTION: &'static str = #description;

            fn contract() -> ::weir_service::Contract {
                ::weir_service::Contract::new(#name, #version) #(#contract_methods)* #(#contract_events)*
            }

            fn mount(
                self: ::std::sync::Arc<Self>,
                builder: ::weir_service::ServiceBuilder,
            ) -> ::weir_service::ServiceBuilder {
                #(#mounts)*
                builder
            }
        }

        #[doc = #client_doc]
        #[derive(Clone, Debug)]
        pub struct #client_ident {
            client: ::weir_service::Client,
        }

        impl #client_ident {
            /// A client without the startup compatibility check.
            pub fn new(client: ::weir_service::Client) -> Self {
                Self { client }
            }

            /// A client, after checking that a running instance speaks a
            /// compatible contract (same major version, every request
            /// schema accepted).
            pub async fn connect(
                client: ::weir_service::Client,
            ) -> ::std::result::Result<Self, ::weir_service::ServiceError> {
                ::weir_service::contract::check_service(
                    &client,
                    &<#self_ty as ::weir_service::ServiceContract>::contract(),
                )
                .await?;
                ::std::result::Result::Ok(Self { client })
            }

            /// The untyped client underneath.
            pub fn inner(&self) -> &::weir_service::Client {
                &self.client
            }

            #(#client_methods)*
        }
    })
}
